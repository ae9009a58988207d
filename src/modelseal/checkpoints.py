"""Open-weights decoder checkpoints (Hugging Face folder layout) read as tensors, for the keyless lineage test.

A folder holds `config.json` and `model.safetensors` (or shards listed in `model.safetensors.index.json`). Only
the tensors the lineage test compares are read: the token embedding and every block's MLP (GPT-2:
`h.{i}.ln_2`, `h.{i}.mlp.c_fc`, `h.{i}.mlp.c_proj`, Conv1D weights stored in x out; Llama:
`model.layers.{i}.post_attention_layernorm`, `mlp.gate_proj`, `up_proj`, `down_proj`). No model code runs, nothing
is downloaded, nothing is unpickled: the config is bounded JSON, every safetensors header is parsed by the
bounded reader (`tensorfile.read_header`) and each tensor's dtype, shape and byte range are checked against the
file before `safetensors` maps it. Every bad folder ends in one `CheckpointError` line.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelSealError
from .safeio import read_json, usable_path
from .tensorfile import read_head, read_header

MAX_CONFIG_BYTES = 1 << 20
MAX_LAYERS = 1024
MAX_WIDTH = 1 << 17  # hidden size and MLP width
MAX_VOCAB = 1 << 21
MAX_SHARDS = 4096
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
LAYOUTS = ("gpt2", "llama")
_SHARD_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}\.safetensors$")


class CheckpointError(ModelSealError):
    """A checkpoint folder that cannot be read (no config, unknown layout, corrupt or inconsistent tensors)."""


@dataclass
class Checkpoint:
    """A decoder checkpoint folder: its layout ("gpt2" | "llama"), sizes from its config, and where each tensor
    lives (validated header entries); `tensor(name)` reads one as float64 numpy."""

    folder: Path
    layout: str
    layers: int
    width: int
    vocab: int
    files: dict[str, Path] = field(default_factory=dict)  # tensor name -> shard
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # tensor name -> header entry
    prefix: str = ""  # GPT-2: "" (GPT2Model) or "transformer." (GPT2LMHeadModel)

    def has(self, name: str) -> bool:
        return self.prefix + name in self.entries

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        full = self.prefix + name
        if full not in self.entries:
            raise CheckpointError(f"{self.folder}: the {self.layout} checkpoint has no tensor '{full}'")
        got = tuple(int(v) for v in self.entries[full]["shape"])
        if shape is not None and got != shape:
            raise CheckpointError(f"{self.folder}: tensor '{full}' has shape {list(got)}, the config says "
                                  f"{list(shape)}")
        from safetensors import safe_open

        try:
            with safe_open(str(self.files[full]), framework="pt") as f:
                t = f.get_tensor(full)
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{self.files[full]}: cannot read tensor '{full}': "
                                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        return t.double().numpy()


def is_checkpoint_folder(path: str | os.PathLike) -> bool:
    return Path(path).is_dir()


def _int(config: dict[str, Any], keys: tuple[str, ...], lo: int, hi: int, source: str) -> int:
    for k in keys:
        if k in config:
            v = config[k]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise CheckpointError(f"{source}: '{k}' must be an integer in [{lo}, {hi}], not {v!r}")
            return int(v)
    raise CheckpointError(f"{source}: the config has no {' / '.join(repr(k) for k in keys)}")


def _shards(folder: Path) -> list[Path]:
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if not index.is_file():
        found = sorted(p.name for p in folder.glob("*.safetensors"))[:3]
        raise CheckpointError(f"{folder} has no model.safetensors nor model.safetensors.index.json"
                              + (f" (found {', '.join(found)})" if found else " (no .safetensors file)"))
    doc = read_json(index, CheckpointError, "checkpoint index", MAX_CONFIG_BYTES * 16)
    wmap = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
        raise CheckpointError(f"{index}: no 'weight_map' of tensor names to shard files")
    names = sorted(set(wmap.values()))
    if len(names) > MAX_SHARDS or not all(_SHARD_NAME.match(n) for n in names):
        raise CheckpointError(f"{index}: the weight map names more than {MAX_SHARDS} shards or a shard that is not "
                              f"a plain .safetensors file name in the folder")
    return [folder / n for n in names]


def _entries(path: Path) -> dict[str, dict[str, Any]]:
    """The validated tensor entries of one safetensors file (dtype known, shape and byte range consistent)."""
    head = read_head(path, CheckpointError, "checkpoint shard")
    header = read_header(head, str(path), CheckpointError)
    n = int.from_bytes(head[:8], "little")
    body = path.stat().st_size - 8 - n
    out: dict[str, dict[str, Any]] = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(e, dict) and e.get("dtype") in DTYPE_BYTES and isinstance(e.get("shape"), list)
              and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1 << 40 for v in e["shape"])
              and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) for v in e["data_offsets"]))
        if not ok:
            if isinstance(e, dict) and e.get("dtype") not in DTYPE_BYTES:
                continue  # integer buffers and the like: never read
            raise CheckpointError(f"{path}: corrupt safetensors header entry for '{name}'")
        a, b = e["data_offsets"]
        if not 0 <= a <= b <= body or b - a != math.prod(e["shape"]) * DTYPE_BYTES[e["dtype"]]:
            raise CheckpointError(f"{path}: tensor '{name}' has a byte range that does not fit its shape or the file")
        out[name] = e
    return out


def open_checkpoint(folder: str | os.PathLike) -> Checkpoint:
    """The checkpoint in `folder` (config.json + safetensors), validated; a bad folder is one CheckpointError line."""
    p = usable_path(folder, CheckpointError, "checkpoint folder")
    if not p.is_dir():
        raise CheckpointError(f"{p} is not a checkpoint folder (config.json + *.safetensors)")
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{p} has no config.json: not a Hugging Face checkpoint folder")
    config = read_json(cfg_path, CheckpointError, "checkpoint config", MAX_CONFIG_BYTES)
    src = str(cfg_path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{src} is not a JSON object")
    layout = config.get("model_type")
    if layout not in LAYOUTS:
        raise CheckpointError(f"{src}: unknown layout (model_type {layout!r}); modelseal reads the "
                              f"{' and '.join(LAYOUTS)} layouts")
    layers = _int(config, ("n_layer", "num_hidden_layers"), 1, MAX_LAYERS, src)
    width = _int(config, ("n_embd", "hidden_size"), 1, MAX_WIDTH, src)
    vocab = _int(config, ("vocab_size",), 1, MAX_VOCAB, src)
    ck = Checkpoint(p, str(layout), layers, width, vocab)
    for shard in _shards(p):
        for name, e in _entries(shard).items():
            ck.entries[name] = e
            ck.files[name] = shard
    if layout == "gpt2" and "h.0.mlp.c_fc.weight" not in ck.entries and "transformer.h.0.mlp.c_fc.weight" in ck.entries:
        ck.prefix = "transformer."
    return ck


def mlp_hidden(ck: Checkpoint) -> int:
    """The MLP width (from the first block's tensors, checked against the config where it says)."""
    if ck.layout == "gpt2":
        name = ck.prefix + "h.0.mlp.c_fc.weight"
        shape = ck.entries.get(name, {}).get("shape")
        if not shape or len(shape) != 2 or shape[0] != ck.width:
            raise CheckpointError(f"{ck.folder}: no GPT-2 MLP tensor '{name}' of {ck.width} x hidden")
        return int(shape[1])
    name = "model.layers.0.mlp.gate_proj.weight"
    shape = ck.entries.get(name, {}).get("shape")
    if not shape or len(shape) != 2 or shape[1] != ck.width:
        raise CheckpointError(f"{ck.folder}: no Llama MLP tensor '{name}' of hidden x {ck.width}")
    return int(shape[0])
