"""Errors raised by modelseal. Every bad input ends in one of these, with a one-line message that says
what is wrong and what to do."""

from __future__ import annotations


def first_line(e: BaseException, limit: int = 200, empty: str | None = None) -> str:
    """The first line of an exception's message, at most `limit` characters, for a one-line error; `empty`
    (default: the exception's type name) when the message is empty."""
    lines = str(e).splitlines()
    return lines[0][:limit] if lines and lines[0] else (empty or type(e).__name__)


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


class BudgetExceeded(SuspectError):
    """Answering would send the suspect more inputs than the query budget (`max_queries`) allows."""


class WriteError(ModelSealError):
    """An output file could not be written (its folder is missing or a file, no permission, disk full)."""


class ReferencePoolError(DataError):
    """A reference pool that cannot give a valid null for this suspect: its manifest is missing, malformed or
    edited, or its models do not cover the suspect (accuracy range)."""


class WeakProtection(ModelSealError, UserWarning):
    """Warned when a protect verb returns a protection that missed its own goal (a lock whose accuracy stayed
    above its target). A library caller gets the result and the warning; a caller that must not keep it (the CLI,
    which would write it) turns the warning into this error with `warnings.simplefilter("error", WeakProtection)`."""
