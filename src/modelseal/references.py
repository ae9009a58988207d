"""Reference pools: many cheap, independently trained models, cached in a folder and reused.

Methods whose null must be estimated from independent models (c-examples) need many of them: R references
cannot support a p-value below 1/(R + 1), so alpha 0.01 needs R >= 99. `make_pool` trains R small models
(varied architectures and seeds, a few epochs each) on data the owner did not use (the attacker split of an
embedded data set), writes each as a modelseal model file beside a `pool.json` manifest, and skips the
models already in the folder, so a pool can be grown and is never retrained. `load_pool` reads one back.

The same pool format serves two roles that must never share a model: *extraction* references (the owner
selects examples that they do not carry, so the examples transfer less) and the *verifier's* references
(they estimate the null). `model_digest` identifies a model by its weights; a c-examples key records the
digests of its extraction references, and verification refuses a verifier reference among them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import DataError, ModelError, ModelSealError
from .runtime import track
from .safeio import read_json, write_atomic
from .tensorfile import tensor_bytes

MANIFEST = "pool.json"
POOL_TYPE = "modelseal-reference-pool"
POOL_FORMAT = 1
MAX_POOL = 1000
# Cheap architectures cycled through a pool: (zoo name, build options). Small on purpose: a reference only
# has to be an honest independent model of the task, and a pool of hundreds must train in seconds on digits.
DEFAULT_ARCHS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "mlp": [("mlp", {"hidden": [32]}), ("mlp", {"hidden": [64]}), ("mlp", {"hidden": [64, 32]}),
            ("mlp", {"hidden": [128]})],
    "cnn": [("cnn", {"channels": [4, 8], "hidden": 32}), ("cnn", {"channels": [8, 16], "hidden": 32})],
}


def model_digest(model: Any) -> str | None:
    """SHA-256 over a module's state (names, dtypes, shapes, bytes), or None for a black-box model.

    The same weights give the same digest whether the model was trained in memory or loaded from a file."""
    module = model if isinstance(model, nn.Module) else getattr(model, "module", None)
    if not isinstance(module, nn.Module):
        return None
    h = hashlib.sha256(b"modelseal-model-state\0")
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def arch_plan(archs: str | list[str] = "mlp,cnn") -> list[tuple[str, dict[str, Any]]]:
    """The (architecture, options) cycle for a pool from a comma-separated list of families (mlp, cnn) or
    zoo architecture names (built with their default options)."""
    from . import models

    names = [a.strip() for a in (archs.split(",") if isinstance(archs, str) else archs) if a.strip()]
    if not names:
        raise ModelSealError("--arch needs at least one architecture (e.g. mlp,cnn)")
    plan: list[tuple[str, dict[str, Any]]] = []
    for a in names:
        if a in DEFAULT_ARCHS:
            plan += DEFAULT_ARCHS[a]
        elif a in models.names():
            plan.append((a, {}))
        else:
            raise ModelSealError(f"unknown reference architecture '{a}'; use mlp, cnn or one of "
                                 f"{', '.join(models.names())}")
    return plan


def _entry_name(i: int) -> str:
    return f"ref-{i:04d}.safetensors"


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    doc = read_json(path, DataError, "reference pool manifest")
    if not isinstance(doc, dict) or doc.get("type") != POOL_TYPE or not isinstance(doc.get("models"), list):
        raise DataError(f"{path} is not a modelseal reference pool manifest; make one with "
                        "`modelseal references make`")
    if doc.get("format") != POOL_FORMAT:
        raise DataError(f"{path} has pool format {doc.get('format')}, this modelseal reads {POOL_FORMAT}")
    return doc


def make_pool(data: str | Any, n: int, out: str | os.PathLike, *, archs: str | list[str] = "mlp,cnn",
              epochs: int = 3, seed: int = 1000, split: str = "attacker", lr: float = 3e-3,
              batch_size: int = 64, device: str | torch.device | None = "cpu", progress: Any = None
              ) -> dict[str, Any]:
    """Train (or reuse from `out`) `n` independent reference models; returns the manifest.

    Model i has architecture plan[i % len(plan)] and seed `seed + i`, trained `epochs` epochs in batches of
    `batch_size` on the `split` of `data` (a data set name or `Splits`), on `device` (auto | cpu | cuda).
    Models already in the folder with the same settings are kept; a folder made with other settings is
    refused (use another folder). The batch size is a setting (it changes the models; recorded only when it
    is not the default 64, so pools made before it was one stay valid); the device is not (it changes the
    models' bits, not their recipe)."""
    from . import data as data_mod
    from . import models
    from .models.io import load_model, save_model
    from .train import evaluate, fit

    n = int(n)
    if not 1 <= n <= MAX_POOL:
        raise ModelSealError(f"a reference pool holds 1 to {MAX_POOL} models, got {n}")
    if int(epochs) < 1:
        raise ModelSealError(f"epochs must be >= 1, got {epochs}")
    name = data if isinstance(data, str) else getattr(getattr(data, "meta", None), "name", "custom")
    splits = data_mod.load(data, seed=0) if isinstance(data, str) else data
    if split not in ("attacker", "owner", "test"):
        raise ModelSealError(f"split must be attacker, owner or test, got {split!r}")
    train_set = getattr(splits, split)
    plan = arch_plan(archs)
    folder = Path(out)
    settings = {"data": name, "split": split, "epochs": int(epochs), "seed": int(seed), "lr": float(lr),
                "archs": [[a, kw] for a, kw in plan]}
    if int(batch_size) != 64:
        settings["batch_size"] = int(batch_size)
    doc = _read_manifest(folder)
    if doc is not None and doc.get("settings") != settings:
        raise ModelSealError(f"{folder} holds a reference pool made with other settings "
                             f"({doc.get('settings')}); use another --out folder")
    entries: list[dict[str, Any]] = list(doc["models"]) if doc else []
    folder.mkdir(parents=True, exist_ok=True)
    with track(progress, n, f"references {name}") as bar:
        bar.update(min(len(entries), n), info="cached")
        for i in range(len(entries), n):
            arch, kw = plan[i % len(plan)]
            model = models.build(arch, splits.meta, seed=int(seed) + i, **kw)
            fit(model, train_set, epochs=int(epochs), lr=float(lr), batch_size=int(batch_size), seed=int(seed) + i,
                device=device, progress=False)
            path = folder / _entry_name(i)
            save_model(model, path, force=True)
            digest = model_digest(load_model(path))
            entries.append({"file": path.name, "arch": arch, "options": kw, "seed": int(seed) + i,
                            "digest": digest, "test_accuracy": round(float(evaluate(model, splits.test)), 4)})
            _write_manifest(folder, settings, entries)  # after every model: an interrupted pool resumes
            bar.update(i + 1, info=f"{arch} acc {entries[-1]['test_accuracy']:.3f}")
    if doc is None or len(entries) != len(doc["models"]):
        _write_manifest(folder, settings, entries)
    return {"type": POOL_TYPE, "format": POOL_FORMAT, "settings": settings, "models": entries[:n],
            "folder": str(folder), "size": len(entries)}


def _write_manifest(folder: Path, settings: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    doc = {"type": POOL_TYPE, "format": POOL_FORMAT, "settings": settings, "models": entries}
    write_atomic(folder / MANIFEST, json.dumps(doc, indent=1, sort_keys=True), force=True)


def load_pool(folder: str | os.PathLike, n: int | None = None, device: str | torch.device = "cpu"
              ) -> list[nn.Module]:
    """The models of a reference pool folder (the first `n`, default all), each checked against the digest
    the manifest records."""
    from .models.io import load_model

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"reference pool {folder} is not a folder; make one with `modelseal references make`")
    doc = _read_manifest(folder)
    if doc is None:
        raise DataError(f"{folder} has no {MANIFEST}; make a reference pool with `modelseal references make`")
    entries = doc["models"][: n if n is not None else None]
    if not entries:
        raise DataError(f"reference pool {folder} holds no models")
    out = []
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("file"), str) or "/" in e["file"] or "\\" in e["file"]:
            raise DataError(f"{folder / MANIFEST} lists a bad model entry: {str(e)[:80]}")
        m = load_model(folder / e["file"], device=device)
        if model_digest(m) != e.get("digest"):
            raise ModelError(f"{folder / e['file']} does not match the digest its pool records; remake the pool")
        out.append(m.eval())
    return out


def as_references(refs: Any, device: str | torch.device = "cpu") -> list[Any]:
    """A list of reference models from a list (models, Suspects, model files), a pool folder, or None."""
    if refs is None:
        return []
    if isinstance(refs, (str, os.PathLike)):
        return load_pool(refs, device=device)
    out: list[Any] = []
    for r in refs:
        if isinstance(r, (str, os.PathLike)) and Path(r).is_dir():
            out += load_pool(r, device=device)
        else:
            out.append(r)
    return out
