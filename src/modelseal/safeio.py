"""The one safe-IO module: every read of an untrusted file and every write of an output goes through here.

Reading. `read_file(path, err, what, max_bytes)` reads at most `max_bytes` from a regular file; a path that is
missing, a directory, a FIFO or device, unreadable, or larger than `max_bytes` ends in one line (`err`) that
names the file. `loads_json` parses untrusted JSON (key and model metadata, safetensors headers,
commitments, evidence files, reference manifests) under one set of bounds:

- at most `MAX_JSON_DEPTH` (64) levels of nesting, and at most `max_bytes` of text (default `MAX_JSON_BYTES`);
- valid UTF-8 only;
- NaN, Infinity and -Infinity literals, and numbers that overflow to infinity (1e999), are refused: no
  file modelseal writes holds one (a commitment binds digests and parameters, an evidence file encodes its
  tensors in base64, `json.dumps` of a verdict is made finite by `verdict.jsonable`), and a non-finite
  number in a parameter or a statistic would only make a comparison silently false;
- a key repeated within one object is refused: Python keeps the last value, other parsers the first, so a
  file with duplicate keys can show a reviewer one thing and modelseal another.

Each refusal is one `err` naming the source. `read_json(path, err, what, max_bytes)` is the two together.

Writing. Only regular files are ever written or replaced. A target that is a directory, a FIFO, a socket, a
character or block device, or a symbolic link to any of them (or a dangling link) is refused with and
without `force`, and is never renamed away or deleted: `--force` means "overwrite my regular file". A
symbolic link to a regular file is written through: the file it points to is replaced (atomically, next to
that file) and the link stays a link, as a user who keeps `model.safetensors -> runs/7/model.safetensors`
means. The type of a target is checked before any work and again just before each rename. Inputs are read
only from regular files, so a FIFO given as a model or key is refused instead of blocking forever.

Writes go to a temporary file next to the target (created 0600 for secrets), are flushed to disk, then
renamed over the target, so an interrupted write (an error, Ctrl-C, SIGTERM under the CLI) leaves the old
file or nothing, never a partial one. `write_files` writes several files as one unit: it checks that no
two targets (and no protected input) are the same file, writes every temporary file, then renames them
with signals blocked; when a rename fails the files already replaced are restored from backups.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ModelSealError, OutputExistsError, WriteError, first_line

MAX_JSON_DEPTH = 64
MAX_JSON_BYTES = 512 * 1024 * 1024  # the largest JSON modelseal reads: an evidence file (evidence.MAX_BYTES)
# A bound for a whole model or key read into memory: far above any model modelseal handles, but a finite
# one, so that no input is read without end.
MAX_FILE_BYTES = 64 * 1024**3


# ---------------------------------------------------------------------------------------------- JSON


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


def _finite_float(text: str) -> float:
    v = float(text)
    if v - v != 0:  # inf (1e999) or nan
        raise ValueError(f"number {text[:40]} is out of range")
    return v


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k[:40]!r} in one object")
        out[k] = v
    return out


def json_depth(obj: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a parsed JSON value (scalars 0), counted iteratively; stops past `limit`."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        elif not isinstance(v, list):
            continue
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        stack.extend((c, d + 1) for c in v if isinstance(c, (dict, list)))
    return deepest


def loads_json(text: str | bytes, source: str, err: type[Exception] = ModelSealError, *,
               max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse JSON from an untrusted source under the module's bounds (see the module docstring): refuses
    text longer than `max_bytes`, invalid UTF-8, invalid JSON, NaN/Infinity, duplicate keys and nesting
    deeper than `MAX_JSON_DEPTH`, each with `err` and a one-line message naming `source`."""
    if len(text) > max_bytes:
        raise err(f"{source} is larger than {max_bytes} bytes; modelseal does not read it")
    deep = f"{source}: JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)"
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                           object_pairs_hook=_unique_keys)
    except RecursionError:
        raise err(deep) from None
    except UnicodeDecodeError:
        raise err(f"{source}: not valid JSON (not UTF-8 text)") from None
    except ValueError as e:
        raise err(f"{source}: not valid JSON ({first_line(e, 120)})") from None
    if json_depth(value) > MAX_JSON_DEPTH:
        raise err(deep)
    return value


# ----------------------------------------------------------------------------------------- reading


def _short(p: str | os.PathLike[str]) -> str:
    s = str(p)
    return s if len(s) <= 120 else f"{s[:60]}...{s[-30:]} ({len(s)} characters)"


def usable_path(path: str | os.PathLike[str], err: type[Exception] = ModelSealError, what: str = "path") -> Path:
    """`path` as a Path, once the system accepts its name: a name past the file system's limit, a folder
    without permission or a NUL byte ends in one `err` naming it (pathlib's exists() and is_file() raise
    OSError or ValueError on these instead of answering). A path that does not exist is fine here."""
    p = Path(path)
    try:
        os.lstat(p)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except (OSError, ValueError) as e:
        raise err(f"cannot use {what} {_short(p)}: {getattr(e, 'strerror', None) or e}") from None
    return p


def _regular_input(p: Path, err: type[Exception], what: str) -> os.stat_result:
    """Refuse (one line) an input that does not exist, is a directory or is not a regular file (a FIFO would
    block the read forever, a device would be read without end); OSError (e.g. a name too long) included."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise err(f"{what} {p} does not exist") from None
    except (OSError, ValueError) as e:
        raise err(f"cannot read {what} {_short(p)}: {getattr(e, 'strerror', None) or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise err(f"{what} {p} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise err(f"{what} {p} is {_kind(st.st_mode)}, not a regular file; give a file")
    return st


def read_file(path: str | os.PathLike[str], err: type[Exception] = ModelSealError, what: str = "file",
              max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file `path`, at most `max_bytes` of them. A missing file, a directory, a FIFO
    or device, a file larger than `max_bytes` (also one that grows while read) or any OSError ends in one
    `err` line naming the path."""
    p = Path(path)
    size = _regular_input(p, err, what).st_size
    if size > max_bytes:
        raise err(f"{what} {p} is larger than {max_bytes} bytes; modelseal does not read it")
    try:
        with open(p, "rb") as f:
            # read(n) allocates n bytes up front: ask for the size the file has, then for what it grew by
            chunks = [f.read(size + 1)]
            got = len(chunks[0])
            while got > size and got <= max_bytes and (more := f.read(min(1 << 24, max_bytes + 1 - got))):
                chunks.append(more)
                got += len(more)
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except OSError as e:
        raise err(f"cannot read {what} {p}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise err(f"{what} {p} is larger than {max_bytes} bytes; modelseal does not read it")
    return data


def read_json(path: str | os.PathLike[str], err: type[Exception] = ModelSealError, what: str = "file",
              max_bytes: int = MAX_JSON_BYTES) -> Any:
    """`loads_json` of `read_file(path, err, what, max_bytes)`; every error names the path."""
    return loads_json(read_file(path, err, what, max_bytes), str(path), err, max_bytes=max_bytes)


# ------------------------------------------------------------------------------------------ writes


_KINDS = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _oserror(p: Path, e: BaseException) -> WriteError:
    return WriteError(f"cannot write {_short(p)}: {getattr(e, 'strerror', None) or e}")


def write_target(path: str | os.PathLike[str]) -> Path:
    """The file a write to `path` creates or replaces: `path` itself, or for a symbolic link to a regular
    file that file (written through; the link stays). Refuses (WriteError) a target that is not a regular
    file (directory, FIFO, socket, device), a link to one, or a dangling link; never touches it."""
    p = Path(path)
    if "\0" in str(p):
        raise WriteError(f"cannot write {str(p)!r}: a path cannot hold a NUL character")
    try:
        st = os.lstat(p)
    except (FileNotFoundError, NotADirectoryError):
        return p
    except (OSError, ValueError) as e:  # a name too long, a folder without permission
        raise _oserror(p, e) from None
    if stat.S_ISLNK(st.st_mode):
        real = Path(os.path.realpath(p))
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise WriteError(f"{p} is a symbolic link to {real}, which does not exist; give the real path to "
                             "write") from None
        except OSError as e:  # a loop of links
            raise _oserror(p, e) from None
        if not stat.S_ISREG(st.st_mode):
            raise WriteError(f"{p} is a symbolic link to {_kind(st.st_mode)} ({real}); modelseal writes only "
                             "regular files, even with --force: give another path")
        return real
    if stat.S_ISDIR(st.st_mode):
        raise WriteError(f"{p} is a directory; give a file path to write")
    if not stat.S_ISREG(st.st_mode):
        raise WriteError(f"{p} is {_kind(st.st_mode)}, not a regular file; modelseal writes only regular files, "
                         "even with --force (which overwrites a regular file): give another path")
    return p


def check_writable(path: str | os.PathLike[str], force: bool) -> None:
    """Raise OutputExistsError if `path` exists and `force` is false; WriteError if it cannot be a regular
    file (see `write_target`) or its name cannot be used.

    A missing parent folder is created at write time; a parent that is a file is refused here.
    """
    p = Path(path)
    target = write_target(p)
    try:
        if target.exists() and not force:
            raise OutputExistsError(f"{p} already exists; pass --force to overwrite it (API: force=True)")
        for parent in target.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise WriteError(f"cannot write {p}: {parent} is a file, not a directory")
                break
    except OSError as e:
        raise _oserror(p, e) from None


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_distinct(paths: dict[str, str | os.PathLike[str] | None] | Sequence[tuple[str, Any]]) -> None:
    """Refuse (ModelSealError) when two of the named paths are the same file, e.g.
    `{"MODEL": m, "--out": out, "--key": key}`; None entries are skipped."""
    pairs = paths.items() if isinstance(paths, dict) else paths
    items = [(k, Path(v)) for k, v in pairs if v is not None]
    for i, (ka, a) in enumerate(items):
        for kb, b in items[i + 1:]:
            if _same_file(a, b):
                raise ModelSealError(f"{ka} and {kb} name the same file ({b}); give each a different path")


def check_outputs(outputs: Sequence[tuple[str, str | os.PathLike[str]]], force: bool = False, *,
                  inputs: Mapping[str, str | os.PathLike[str] | None] | None = None) -> None:
    """Everything `write_files` refuses, checked before any work is done: `outputs` (label, path) are
    distinct files, none is one of `inputs`, and each can be written (see `check_writable`)."""
    paths = [Path(p) for _, p in outputs]
    for p in paths:
        if "\0" in str(p):
            raise WriteError(f"cannot write {str(p)!r}: a path cannot hold a NUL character")
    try:
        check_distinct([(label, Path(p)) for label, p in outputs])
        for label, q in (inputs or {}).items():
            if q is None:
                continue
            for tl, t in zip([label for label, _ in outputs], paths, strict=True):
                if _same_file(Path(q), t):
                    raise ModelSealError(f"{label} and {tl} name the same file ({t}); writing would destroy "
                                         "the input: give the output another path")
        for p in paths:
            check_writable(p, force)
    except (OSError, ValueError) as e:  # e.g. a folder without permission, a NUL byte in the path
        raise WriteError(f"cannot write {', '.join(map(str, paths))}: {getattr(e, 'strerror', None) or e}") \
            from None


def _mkparent(p: Path) -> None:
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot write {p}: cannot create its folder {p.parent} ({e.strerror or e})") from None


def _tmp_name(p: Path) -> Path:
    return p.with_name(f".{p.name}.{os.getpid()}.tmp")


def _write_tmp(tmp: Path, data: bytes | str, private: bool) -> Path:
    """Write `data` to the temporary file `tmp`, flushed to disk (the caller removes it on failure)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0),
                 0o600 if private else 0o666)
    if private and hasattr(os, "fchmod"):
        os.fchmod(fd, 0o600)  # also when a stale temporary file of that name was there
    with os.fdopen(fd, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    return tmp


class _SignalsHeld:
    """Hold SIGINT/SIGTERM for a few renames so that they are not split by a signal.

    Two layers, because a signal sent to the process may be delivered to any thread (torch keeps worker
    threads): the main thread blocks them (POSIX `pthread_sigmask`), and the Python-level handlers, which
    always run in the main thread whichever thread caught the signal, are replaced by a recorder; on exit
    the old handlers come back and each recorded signal is passed to its old handler."""

    SIGNALS = [getattr(signal, n) for n in ("SIGINT", "SIGTERM") if hasattr(signal, n)]

    def __enter__(self) -> None:
        self.old_mask = None
        self.old_handlers: dict[int, Any] = {}
        self.caught: list[int] = []
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.old_handlers[sig] = signal.signal(sig, lambda signum, frame: self.caught.append(signum))
        if hasattr(signal, "pthread_sigmask"):
            self.old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)

    def __exit__(self, *exc: Any) -> None:
        if self.old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.old_mask)  # a blocked signal is recorded now
        for sig, handler in self.old_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for sig in dict.fromkeys(self.caught):
            handler = self.old_handlers.get(sig)
            if callable(handler):
                handler(sig, None)
            elif handler != signal.SIG_IGN:
                os.kill(os.getpid(), sig)


def write_files(items: Sequence[tuple[str | os.PathLike[str], bytes | str]], force: bool = False, *,
                private: Iterable[str | os.PathLike[str]] = (),
                inputs: Mapping[str, str | os.PathLike[str] | None] | None = None,
                names: Sequence[str] | None = None) -> list[Path]:
    """Write several files as one unit: all of them, or none (the old files stay as they were).

    Refuses before writing anything: two targets that are the same file, a target that is one of
    `inputs` (label -> path, e.g. {"MODEL": model_path}), an existing target without `force`, a target
    that is a directory or whose parent is a file. `private` targets are created with mode 0600.
    `names` labels the targets in messages (e.g. ["--out", "--key"]). Returns the written paths.
    """
    given = [Path(p) for p, _ in items]
    labels = list(names) if names is not None else [str(p) for p in given]
    check_outputs(list(zip(labels, given, strict=True)), force, inputs=inputs)
    paths = [write_target(p) for p in given]
    secret = {os.path.realpath(p) for p in private}
    tmps: list[Path] = []
    backups: list[tuple[Path, Path]] = []
    done: list[Path] = []
    try:
        for p, (_, data) in zip(paths, items, strict=True):
            _mkparent(p)
            tmps.append(_tmp_name(p))  # listed before it exists, so that an interrupt cannot leak it
            try:
                _write_tmp(tmps[-1], data, os.path.realpath(p) in secret)
            except OSError as e:
                raise WriteError(f"cannot write {p}: {e.strerror or e}") from None
        with _SignalsHeld():
            current = paths[0]
            try:
                for current, tmp in zip(paths, tmps, strict=True):
                    write_target(current)  # still a regular file (or absent) at the moment of the rename
                    if current.exists():
                        bak = current.with_name(f".{current.name}.{os.getpid()}.bak")
                        os.replace(current, bak)
                        backups.append((current, bak))
                    os.replace(tmp, current)
                    done.append(current)
            except BaseException as e:
                for q in done:
                    q.unlink(missing_ok=True)
                for q, bak in backups:
                    os.replace(bak, q)
                backups.clear()
                if isinstance(e, OSError):
                    raise WriteError(f"cannot write {current}: {e.strerror or e}; nothing was written") from None
                if isinstance(e, WriteError):
                    raise WriteError(f"{e}; nothing was written") from None
                raise
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        for _, bak in backups:
            bak.unlink(missing_ok=True)
    return given


def write_atomic(path: str | os.PathLike[str], data: bytes | str, force: bool = False, *,
                 private: bool = False) -> Path:
    """Write `data` to `path` through a temporary file and a rename, so a failure never leaves a
    half-written file; refuses to overwrite an existing file unless `force`. `private` creates the file
    with mode 0600 (keys). Returns the Path."""
    return write_files([(path, data)], force, private=[path] if private else ())[0]


def commitment_path(key_path: str | os.PathLike[str]) -> Path:
    """Where a key's public commitment is written, beside it: KEY.seal -> KEY.public.json."""
    key_path = Path(key_path)
    return key_path.with_name(key_path.stem + ".public.json")
