"""Errors raised by modelseal. Every bad input ends in one of these, with a one-line message that says
what is wrong and what to do."""

from __future__ import annotations


class ModelSealError(Exception):
    """Base class of every error modelseal raises on purpose."""


class KeyFormatError(ModelSealError):
    """A key file is not a modelseal key, is truncated, or has an unknown format version or method."""


class KeyIntegrityError(ModelSealError):
    """A key's content does not match its digest or its commitments."""


class KeyMismatchError(ModelSealError):
    """A key belongs to another model (input shape, output size or weights differ)."""


class DataError(ModelSealError):
    """A data set is unknown, missing or malformed."""


class ModelError(ModelSealError):
    """A model is unknown, malformed, or cannot be used the way it was asked."""


class SuspectError(ModelSealError):
    """A suspect model could not be queried (bad file, bad answer, NaN outputs, time-out)."""


class WhiteBoxRequired(SuspectError):
    """The method needs the suspect's weights, but the suspect is black-box (ONNX or HTTP)."""


class RegistryError(ModelSealError):
    """An unknown method or attack name."""


class OutputExistsError(ModelSealError):
    """Refusing to overwrite an existing file without force=True / --force."""


def check_writable(path, force: bool) -> None:
    """Raise OutputExistsError if `path` exists and `force` is false."""
    from pathlib import Path

    p = Path(path)
    if p.exists() and not force:
        raise OutputExistsError(f"{p} already exists; pass --force (force=True) to overwrite it")


def write_atomic(path, data: bytes | str, force: bool = False):
    """Write `data` to `path` through a temporary file and a rename, so a failure never leaves a
    half-written file; refuses to overwrite an existing file unless `force`. Returns the Path."""
    import os
    from pathlib import Path

    p = Path(path)
    check_writable(p, force)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p
