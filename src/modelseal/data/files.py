"""Users' own data from standard on-disk formats: IDX (MNIST, Fashion-MNIST), CIFAR binary, `.npz`, and
a folder of images with one sub-folder per class.

Every loader returns `(x, y, meta)`: `x` a float32 tensor N×C×H×W (or N×D), `y` int64 labels (float32
targets for regression), and a `Meta`. Anything missing or malformed ends in a one-line `DataError`
naming the file and what was expected.

Choices worth knowing:
- CIFAR is read from the *binary* release only. The "python version" is a set of pickles, and unpickling
  a file runs whatever code it carries, so it is never opened; a directory holding only that release is
  refused with a message that points at the binary one. A directory holding both is read from the
  binary files, and the pickles are not touched.
- `.npz` is read with `allow_pickle=False`; an object array is refused. Integer `y` means classification
  (`num_classes = max + 1` unless given), float `y` means regression with one output per column. uint8 `x`
  is scaled to [0, 1]; other `x` keeps its values and the bounds are its min and max. (N, H, W) inputs
  get a channel axis; a 4-D channels-last array (last axis 1 or 3 and second axis not) is moved to
  channels-first.
- An image folder needs Pillow; all images are resized (bilinear) to `size` (width, height), by default
  the first image's size, and converted to "L" when every image is greyscale, else "RGB".
- Bounds, so that no file can make a loader allocate without limit: at most `MAX_BYTES` of pixel or array
  data (decompressed), at most `MAX_CLASSES` classes, inputs of 1 to 3 axes after the example axis, none
  of them empty. Arrays in an `.npz` are checked against their header before they are read.
"""

from __future__ import annotations

import gzip
import math
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import validate
from ..errors import DataError, first_line
from . import CLASSIFICATION, REGRESSION, Meta

Loaded = tuple[torch.Tensor, torch.Tensor, Meta]

MAX_BYTES = 1 << 32  # 4 GiB of decompressed data
MAX_CLASSES = 100_000


def _no_extra(kind: str, kw: dict[str, Any], accepted: str = "none") -> None:
    if kw:
        raise DataError(f"{kind}: unknown option(s) {', '.join(sorted(kw))}; accepted: {accepted}")


def _directory(kind: str, arg: str | Path, expected: str) -> Path:
    d = Path(arg).expanduser()
    if not d.exists():
        raise DataError(f"{kind}: no such directory {d}; expected a directory with {expected}")
    if not d.is_dir():
        raise DataError(f"{kind}: {d} is not a directory; expected a directory with {expected}")
    return d


# --------------------------------------------------------------------------------------------- IDX

_IDX_UBYTE = 0x08


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read(MAX_BYTES + 1)
        else:
            if path.stat().st_size > MAX_BYTES:
                raise DataError(f"idx: {path} is larger than {MAX_BYTES} bytes; modelseal does not load it")
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"idx: cannot read {path} ({e}); expected an IDX file, optionally gzipped") from None
    if len(raw) > MAX_BYTES:
        raise DataError(f"idx: {path} decompresses to more than {MAX_BYTES} bytes; modelseal does not load it")
    return raw


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Parse one IDX file of unsigned bytes with `ndim` dimensions (header checked against the size)."""
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4:
        raise DataError(f"idx: {path} is {len(raw)} bytes, too short for an IDX header")
    zero, dtype, nd = struct.unpack(">HBB", raw[:4])
    if zero != 0:
        raise DataError(f"idx: {path} has a bad magic number {raw[:4].hex()}; expected an IDX file "
                        "starting with 0x0000")
    if dtype != _IDX_UBYTE:
        raise DataError(f"idx: {path} has element type 0x{dtype:02x}; only unsigned bytes (0x08) are "
                        "supported")
    if nd != ndim:
        raise DataError(f"idx: {path} has {nd} dimensions; expected {ndim}")
    head = 4 + 4 * nd
    if len(raw) < head:
        raise DataError(f"idx: {path} is truncated inside its header ({len(raw)} bytes)")
    dims = struct.unpack(f">{nd}I", raw[4:head])
    size = math.prod(dims)  # Python ints: a product past 2**64 must not wrap (to 0) and match an empty file
    if len(raw) - head != size:
        raise DataError(f"idx: {path} holds {len(raw) - head} data bytes but its header {tuple(dims)} says "
                        f"{size}; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def _idx_file(d: Path, prefix: str, what: str, nd: int) -> Path | None:
    for sep in ("-", "."):  # some archives name them train-images.idx3-ubyte
        for suffix in ("", ".gz"):
            p = d / f"{prefix}-{what}{sep}idx{nd}-ubyte{suffix}"
            if p.is_file():
                return p
    return None


def load_idx(arg: str | Path, **kw: Any) -> Loaded:
    """MNIST / Fashion-MNIST IDX files in a directory (train and/or t10k pair, each optionally .gz)."""
    _no_extra("idx", kw)
    expected = "train-images-idx3-ubyte and train-labels-idx1-ubyte (and/or the t10k- pair), optionally .gz"
    d = _directory("idx", arg, expected)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for prefix in ("train", "t10k"):
        img, lab = _idx_file(d, prefix, "images", 3), _idx_file(d, prefix, "labels", 1)
        if img is None and lab is None:
            continue
        if img is None or lab is None:
            have, missing = (img, "labels-idx1") if lab is None else (lab, "images-idx3")
            raise DataError(f"idx: found {have} but no {prefix}-{missing}-ubyte[.gz] in {d}; both files of "
                            "a pair are needed")
        x, y = read_idx(img, 3), read_idx(lab, 1)
        if len(x) != len(y):
            raise DataError(f"idx: {img} holds {len(x)} images but {lab} holds {len(y)} labels; they must "
                            "match")
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise DataError(f"idx: {img} has images of {x.shape[1:]} but the train images are "
                            f"{xs[0].shape[1:]}; both sets must have one size")
        xs.append(x)
        ys.append(y)
    if not xs:
        raise DataError(f"idx: no IDX files in {d}; expected {expected}")
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) == 0:
        raise DataError(f"idx: the IDX files in {d} hold no images")
    h, w = x.shape[1:]
    if h == 0 or w == 0:
        raise DataError(f"idx: the images in {d} are {h}x{w} pixels; expected at least 1x1")
    xt = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
    yt = torch.from_numpy(y.astype(np.int64))
    meta = Meta(f"idx:{d}", (1, h, w), (0.0, 1.0), int(y.max()) + 1, CLASSIFICATION)
    return xt, yt, meta


# -------------------------------------------------------------------------------------------- CIFAR

_CIFAR_PIXELS = 3 * 32 * 32
_CIFAR = {
    # kind: (binary files, label bytes, classes, label-names file, sub-folder of the binary archive)
    "cifar10": ([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"], 1, 10,
                "batches.meta.txt", "cifar-10-batches-bin"),
    "cifar100": (["train.bin", "test.bin"], 2, 100, "fine_label_names.txt", "cifar-100-binary"),
}
_PICKLED = {  # the python release: a sub-folder, or the pickled batch files themselves
    "cifar10": ("cifar-10-batches-py", ["data_batch_1", "data_batch_2", "test_batch", "batches.meta"]),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"]),
}


def _load_cifar(kind: str, arg: str | Path, **kw: Any) -> Loaded:
    _no_extra(kind, kw)
    files, nlab, classes, names_file, sub = _CIFAR[kind]
    expected = f"the CIFAR binary release ({', '.join(files)})"
    d = _directory(kind, arg, expected)
    if (d / sub).is_dir() and not any((d / f).is_file() for f in files):
        d = d / sub
    present = [d / f for f in files if (d / f).is_file()]
    if not present:
        py_dir, py_files = _PICKLED[kind]
        pickled = [py_dir] if (d / py_dir).is_dir() else [n for n in py_files if (d / n).is_file()]
        if pickled:
            raise DataError(f"{kind}: {d / pickled[0]} is the pickled python release, which modelseal never "
                            "loads (unpickling can run arbitrary code); download the binary release "
                            f"({sub}) instead")
        raise DataError(f"{kind}: no CIFAR batch files in {d}; expected {expected}")
    record = nlab + _CIFAR_PIXELS
    xs, ys = [], []
    for p in present:
        try:
            if p.stat().st_size > MAX_BYTES:
                raise DataError(f"{kind}: {p} is larger than {MAX_BYTES} bytes; not a CIFAR batch")
            raw = np.fromfile(p, dtype=np.uint8)
        except OSError as e:
            raise DataError(f"{kind}: cannot read {p} ({e})") from None
        if raw.size == 0 or raw.size % record:
            raise DataError(f"{kind}: {p} is {raw.size} bytes, not a positive multiple of the {record}-byte "
                            "record; the file is truncated or not a CIFAR binary batch")
        rec = raw.reshape(-1, record)
        y = rec[:, nlab - 1]  # CIFAR-100 stores coarse then fine; the fine label is the last label byte
        if int(y.max()) >= classes:
            raise DataError(f"{kind}: {p} holds label {int(y.max())}, but {kind} has {classes} classes; "
                            "is this the right data set?")
        xs.append(rec[:, nlab:].reshape(-1, 3, 32, 32))
        ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    extra: dict[str, Any] = {}
    if (d / names_file).is_file():
        try:
            text = (d / names_file).read_text(errors="replace")
        except OSError as e:
            raise DataError(f"{kind}: cannot read {d / names_file} ({e.strerror or e})") from None
        names = [n.strip() for n in text.splitlines() if n.strip()]
        if len(names) == classes:
            extra["classes"] = names
    xt = torch.from_numpy(x.astype(np.float32) / 255.0)
    yt = torch.from_numpy(y.astype(np.int64))
    return xt, yt, Meta(f"{kind}:{d}", (3, 32, 32), (0.0, 1.0), classes, CLASSIFICATION, extra=extra)


def load_cifar10(arg: str | Path, **kw: Any) -> Loaded:
    """CIFAR-10 binary release: data_batch_1.bin … data_batch_5.bin and test_batch.bin (those present)."""
    return _load_cifar("cifar10", arg, **kw)


def load_cifar100(arg: str | Path, **kw: Any) -> Loaded:
    """CIFAR-100 binary release: train.bin and test.bin (fine labels, 100 classes)."""
    return _load_cifar("cifar100", arg, **kw)


# ---------------------------------------------------------------------------------------------- npz


def _channels_first(x: np.ndarray) -> np.ndarray:
    if x.ndim == 2:
        return x
    if x.ndim == 1:
        return x[:, None]
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


def load_npz(arg: str | Path, num_classes: int | None = None, **kw: Any) -> Loaded:
    """An .npz archive with arrays `x` (inputs) and `y` (integer labels or float regression targets)."""
    _no_extra("npz", kw, "num_classes")
    p = Path(arg).expanduser()
    if not p.is_file():
        raise DataError(f"npz: no such file {p}; expected an .npz archive with arrays x and y")
    if num_classes is not None:
        num_classes = validate.count("npz: num_classes", num_classes, 1, MAX_CLASSES, error=DataError)
    _npz_precheck(p)
    try:
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"npz: cannot read {p} ({e}); expected an .npz archive with arrays x and y") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"npz: {p} is a single .npy array; expected an .npz archive with arrays x and y "
                        "(np.savez(path, x=..., y=...))")
    with z:
        missing = [k for k in ("x", "y") if k not in z.files]
        if missing:
            has = ", ".join(z.files) or "none"
            raise DataError(f"npz: {p} has no array {' or '.join(missing)} (it has {has}); expected arrays "
                            "x and y")
        arrays = {}
        for k in ("x", "y"):
            try:
                arrays[k] = z[k]
            except ValueError:
                raise DataError(f"npz: array {k} in {p} is an object array, which is never loaded (it would "
                                "need unpickling); save plain numeric arrays") from None
            except Exception as e:  # zipfile and numpy raise many types on a corrupt member
                raise DataError(f"npz: array {k} in {p} is corrupt ({type(e).__name__}: "
                                f"{first_line(e, 120, empty='unreadable')})") from None
    return _tensors("npz", p, arrays["x"], arrays["y"], num_classes)


def _tensors(kind: str, p: Path, x: np.ndarray, y: np.ndarray, num_classes: int | None) -> Loaded:
    """Inputs `x` and labels or targets `y` read from file `p` (an npz archive, a CSV table) as tensors and
    their Meta: integer labels are a classification, float targets a regression; checked as they convert."""
    for k, a in (("x", x), ("y", y)):
        if a.dtype.kind not in "biuf":
            raise DataError(f"{kind}: array {k} in {p} has dtype {a.dtype}; expected a real numeric array")
    if x.ndim == 0 or y.ndim == 0 or len(x) == 0:
        raise DataError(f"{kind}: {p} must hold at least one item, with x of shape (N, ...) and y of shape (N,)")
    if len(x) != len(y):
        raise DataError(f"{kind}: x in {p} has {len(x)} items but y has {len(y)}; they must match")
    if x.ndim > 4 or 0 in x.shape:
        raise DataError(f"{kind}: x in {p} has shape {x.shape}; expected (N, D), (N, H, W) or (N, C, H, W) with "
                        "no empty axis")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{kind}: x in {p} contains NaN or infinite values")
    x = _channels_first(x)
    if x.dtype == np.uint8:
        xt, bounds = torch.from_numpy(x.astype(np.float32) / 255.0), (0.0, 1.0)
    else:
        with np.errstate(over="ignore"):
            x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise DataError(f"{kind}: x in {p} holds values beyond the float32 range")
        lo, hi = float(x.min()), float(x.max())
        bounds = (lo, hi) if lo < hi else (lo, lo + 1.0)
        xt = torch.from_numpy(x)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DataError(f"{kind}: y in {p} contains NaN or infinite values")
        if y.ndim > 2:
            raise DataError(f"{kind}: regression targets y in {p} have shape {y.shape}; expected (N,) or (N, k)")
        yt = torch.from_numpy(y.astype(np.float32).reshape(len(y), -1))
        task, out = REGRESSION, int(yt.shape[1])
        if num_classes is not None:
            raise DataError(f"{kind}: num_classes is for integer labels; this y is float (regression)")
    else:
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise DataError(f"{kind}: integer labels y in {p} have shape {y.shape}; expected (N,)")
        if y.dtype.kind == "u" and y.dtype.itemsize == 8 and int(y.max()) >= 2**63:
            raise DataError(f"{kind}: y in {p} holds the label {int(y.max())}; labels must be 0..C-1")
        y = y.astype(np.int64)
        if int(y.min()) < 0:
            raise DataError(f"{kind}: y in {p} holds the negative label {int(y.min())}; labels must be 0..C-1")
        if int(y.max()) >= MAX_CLASSES:
            raise DataError(f"{kind}: y in {p} holds the label {int(y.max())}; at most {MAX_CLASSES} classes are "
                            "supported (labels must be 0..C-1)")
        out = int(y.max()) + 1
        if num_classes is not None:
            if int(num_classes) < out:
                raise DataError(f"{kind}: num_classes={num_classes} but y in {p} holds label {out - 1}")
            out = int(num_classes)
        yt, task = torch.from_numpy(y), CLASSIFICATION
    return xt, yt, Meta(f"{kind}:{p}", tuple(xt.shape[1:]), bounds, out, task)




MAX_CSV_BYTES = 1 << 30  # 1 GiB of text
LABEL_COLUMNS = ("label", "y", "target", "class")


def load_csv(arg: str | Path, label: str | None = None, num_classes: int | None = None, **kw: Any) -> Loaded:
    """A CSV table with a header row: numeric columns, one of them the label (`label`, else a column named
    label / y / target / class, else the last). Whole-number labels are classes 0..C-1; others are a regression
    target. Every other column is an input feature."""
    _no_extra("csv", kw, "label, num_classes")
    import csv

    p = Path(arg).expanduser()
    if not p.is_file():
        raise DataError(f"csv: no such file {p}; expected a CSV table with a header row")
    if p.stat().st_size > MAX_CSV_BYTES:
        raise DataError(f"csv: {p} is larger than {MAX_CSV_BYTES} bytes; save it as an .npz archive instead")
    if num_classes is not None:
        num_classes = validate.count("csv: num_classes", num_classes, 1, MAX_CLASSES, error=DataError)
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise DataError(f"csv: {p} is not UTF-8 text") from None
    except csv.Error as e:
        raise DataError(f"csv: {p} is not a valid CSV table ({e})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise DataError(f"csv: {p} needs a header row and at least one row of numbers")
    header = [c.strip() for c in rows[0]]
    if len(header) < 2 or len(set(header)) != len(header):
        raise DataError(f"csv: {p}'s header must name at least two distinct columns (features and a label), "
                        f"got {header[:10]}")
    lower = [h.lower() for h in header]
    if label is not None:
        if label not in header:
            raise DataError(f"csv: {p} has no column '{label}'; its columns: {', '.join(header[:20])}")
        at = header.index(label)
    else:
        at = next((lower.index(n) for n in LABEL_COLUMNS if n in lower), len(header) - 1)
    table = np.empty((len(rows) - 1, len(header)), dtype=np.float64)
    for i, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise DataError(f"csv: {p} line {i} has {len(r)} fields, the header {len(header)}")
        try:
            table[i - 2] = [float(c) for c in r]
        except ValueError:
            bad = next(c for c in r if not _is_number(c))
            raise DataError(f"csv: {p} line {i}: {bad[:40]!r} is not a number (every column must be numeric)") \
                from None
    x = np.delete(table, at, axis=1)
    y = table[:, at]
    if np.isfinite(y).all() and np.all(y == np.round(y)) and (y >= 0).all():
        y = y.astype(np.int64)
    return _tensors("csv", p, x, y, num_classes)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _npz_precheck(p: Path) -> None:
    """Refuse before numpy reads anything: a file that is not a zip archive (a bare .npy, a pickle), and
    an array whose header promises more data than its member holds or than `MAX_BYTES` (numpy allocates
    the declared size before it reads)."""
    try:
        with open(p, "rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            raise DataError(f"npz: {p} is a single .npy array; expected an .npz archive with arrays x and y "
                            "(np.savez(path, x=..., y=...))")
        if not zipfile.is_zipfile(p):
            raise DataError(f"npz: {p} is not an .npz (zip) archive; expected arrays x and y saved with "
                            "np.savez")
        with zipfile.ZipFile(p) as zf:
            for k in ("x", "y"):
                try:
                    info = zf.getinfo(f"{k}.npy")
                except KeyError:
                    continue  # np.load reports the missing array with the names it has
                if info.file_size > MAX_BYTES:
                    raise DataError(f"npz: array {k} in {p} is {info.file_size} bytes, more than {MAX_BYTES}")
                with zf.open(info) as m:
                    version = np.lib.format.read_magic(m)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(m)
                declared = int(np.prod(shape, dtype=object)) * max(dtype.itemsize, 1)
                if declared > info.file_size:
                    raise DataError(f"npz: array {k} in {p} declares shape {shape} of {dtype} but holds "
                                    f"only {info.file_size} bytes; the file is truncated or corrupt")
    except DataError:
        raise
    except Exception as e:  # zipfile and numpy's header parser raise many types on a corrupt archive
        raise DataError(f"npz: cannot read {p} ({type(e).__name__}: "
                        f"{first_line(e, 120, empty='corrupt')}); expected an .npz archive "
                        "with arrays x and y") from None


# ------------------------------------------------------------------------------------------- folder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm")
_WIDE_GREY = {"I", "I;16", "I;16B", "I;16L", "F"}
_GREY = {"1", "L", "LA"} | _WIDE_GREY


def _pixels(im: Any, mode: str, target: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    im.load()
    if mode == "L" and im.mode in _WIDE_GREY:
        # 16-bit / float greys: convert("L") would clip, so scale by the type's range first
        top = 1.0 if im.mode == "F" else 65535.0
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(a / top * 255.0, 0, 255).astype(np.uint8), "L")
    im = im.convert(mode)
    if im.size != target:
        im = im.resize(target, Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def load_folder(arg: str | Path, size: int | tuple[int, int] | None = None, **kw: Any) -> Loaded:
    """Images in one sub-folder per class (names sorted → labels 0..C-1), resized to one size."""
    _no_extra("folder", kw, "size")
    try:
        from PIL import Image
    except ImportError:
        raise DataError("folder: reading images needs Pillow (pip install pillow)") from None
    expected = f"one sub-folder per class holding images ({', '.join(IMAGE_SUFFIXES)})"
    d = _directory("folder", arg, expected)
    class_dirs = sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
    if not class_dirs:
        raise DataError(f"folder: {d} has no class sub-folders; expected {expected}")
    files: list[tuple[Path, int]] = []
    for label, c in enumerate(class_dirs):
        imgs = sorted(f for f in c.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not imgs:
            raise DataError(f"folder: class folder {c} holds no images; expected files ending in "
                            f"{', '.join(IMAGE_SUFFIXES)}")
        files.extend((f, label) for f in imgs)
    # Pillow parses untrusted bytes and raises many types on a malformed file (struct.error, IndexError,
    # ZeroDivisionError, ...): any exception while reading one image means that image is unreadable.
    bad = (Exception,)

    def _unreadable(f: Path, e: Exception) -> DataError:
        return DataError(f"folder: cannot read image {f} ({type(e).__name__}: {e}); remove or replace it")

    modes = []
    first_size = None
    for f, _ in files:
        try:
            with Image.open(f) as im:  # header only: mode and size
                modes.append(im.mode)
                first_size = first_size or im.size
        except bad as e:
            raise _unreadable(f, e) from None
    mode = "L" if all(m in _GREY for m in modes) else "RGB"
    target: tuple[int, ...] | None  # its length is checked below
    if size is None:
        target = first_size
    elif isinstance(size, int) and not isinstance(size, bool):
        target = (size, size)
    elif isinstance(size, (tuple, list)) and all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        target = tuple(size)
    else:
        raise DataError(f"folder: size must be a positive int or (width, height), got {size!r}")
    if target is None or len(target) != 2 or min(target) < 1:
        raise DataError(f"folder: size must be a positive int or (width, height), got {size}")
    total = len(files) * target[0] * target[1] * (1 if mode == "L" else 3)
    if total > MAX_BYTES:
        raise DataError(f"folder: {len(files)} images of {target[0]}x{target[1]} would need {total} bytes, more "
                        f"than {MAX_BYTES}; pass a smaller size (e.g. folder:DIR with size=64)")
    arrays = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                arrays.append(_pixels(im, mode, target))
        except bad as e:
            raise _unreadable(f, e) from None
    x = np.stack(arrays)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    xt = torch.from_numpy(np.ascontiguousarray(x).astype(np.float32) / 255.0)
    yt = torch.tensor([label for _, label in files], dtype=torch.int64)
    meta = Meta(f"folder:{d}", tuple(xt.shape[1:]), (0.0, 1.0), len(class_dirs), CLASSIFICATION,
                extra={"classes": [c.name for c in class_dirs]})
    return xt, yt, meta


LOADERS: dict[str, Callable[..., Loaded]] = {
    "idx": load_idx,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "npz": load_npz,
    "csv": load_csv,
    "folder": load_folder,
}
