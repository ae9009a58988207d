"""The one safetensors module: a bounded header reader that never trusts the file, and tensor bytes for
digests. The bounds on the header's JSON and the file checks are `safeio`'s (the one safe-IO module); a
safetensors header is at most `MAX_HEADER` bytes.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelSealError
from .safeio import _regular_input, loads_json

# The header metadata entry that says what a safetensors file is (read without torch): a modelseal key, a model of
# the zoo (its architecture spec), or a state dict of the user's own architecture (`--arch`).
KEY_META = "modelseal"
MODEL_META = "modelseal_model"
USER_ARCH_META = "modelseal_user_arch"

MAX_HEADER = 100 * 1024 * 1024


if TYPE_CHECKING:
    import torch


def tensor_bytes(t: torch.Tensor) -> bytes:
    import torch

    t = t.contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


# ----------------------------------------------------------------------------------------- headers


def state_sha256(state: dict[str, Any]) -> str:
    """SHA-256 over a state dict's tensors in name order (name, dtype, shape, little-endian bytes): what
    identifies a model's weights whatever file or device holds them."""
    import hashlib

    h = hashlib.sha256()
    for k, t in sorted(state.items()):
        h.update(k.encode() + b"\0" + str(t.dtype).encode() + str(list(t.shape)).encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def pickled(head: bytes) -> bool:
    """Whether a file starting with `head` is what torch.save writes: a zip archive, or a bare pickle. A
    safetensors file whose header length's low byte is 0x80 (a 384-byte header) starts like a bare pickle; its
    ninth byte opens the JSON header, so with 9 bytes or more of `head` such a file is not taken for one."""
    if len(head) >= 9 and head[8:9] == b"{":
        return False
    return head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"


def pickle_hint(source: str) -> str:
    """What to do with a PyTorch pickle (`torch.save`): modelseal never unpickles, so convert it once, where
    the file is trusted, to a safetensors state dict."""
    return (f"{source} is a PyTorch pickle (torch.save / torch.export), which modelseal never opens: torch "
            "unpickles such files, and unpickling can run code. "
            "Convert it once where you trust it: python -c \"import torch, safetensors.torch as st; "
            f"st.save_file(torch.load('{source}', weights_only=True), 'model.safetensors')\" and pass the "
            "new file with --arch package.module:factory")


def read_header(data: bytes, source: str, err: type[Exception]) -> dict[str, Any]:
    """Parse a safetensors header (bounded length and depth) without decoding tensors; return it whole."""
    if len(data) < 8:
        raise err(f"{source} is truncated or empty: not a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n == 0 or n > MAX_HEADER or 8 + n > len(data):
        if pickled(data):
            raise err(pickle_hint(source))
        raise err(f"{source} is truncated or not a safetensors file (header length {n}, file {len(data)} bytes)")
    header = loads_json(data[8 : 8 + n], f"{source}: safetensors header", err)
    if not isinstance(header, dict):
        raise err(f"{source}: safetensors header is not a JSON object")
    return header


def read_header_metadata(data: bytes, source: str, err: type[Exception]) -> dict[str, str]:
    """Parse a safetensors header as JSON without decoding tensors; return its `__metadata__`."""
    meta = read_header(data, source, err).get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise err(f"{source}: safetensors metadata must map strings to strings")
    return meta


def read_head(path: str | os.PathLike, err: type[Exception] = ModelSealError, what: str = "file") -> bytes:
    """The first bytes of a safetensors file up to the end of its header (at most MAX_HEADER + 9 bytes), for
    `read_header` without reading the tensors; an OSError ends in one line naming the path."""
    _regular_input(Path(path), err, what)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) == 8:
                head += f.read(min(int.from_bytes(head, "little"), MAX_HEADER + 1))
    except OSError as e:
        raise err(f"cannot read {what} {path}: {e.strerror or e}") from None
    return head


