"""Reference pools: many independently trained models, cached in a folder with a manifest, and reused.

Methods whose null must be estimated from independent models (c-examples, the peer baselines akh, ipguard,
modeldiff, sac, and the black-box part of the lineage test) need many of them: R references cannot support a
p-value below 1/(R + 1), so alpha 0.01 needs R >= 99. A reference null is valid only when an independent
suspect is **exchangeable** with the references (issue 37): a pool of under-trained models is a null of
under-trained models, and a properly trained independent suspect then looks "closer to the owner" than all of
them. Measured (benchmarks/references.py, digits, owner CNN, 40 converged independents of the zoo's mlp and
cnn, alpha 0.01): with the old default pool (3 epochs, small widths, test accuracy 0.22-0.92) SAC accused 40 of
40, the lineage test's black-box part 12 of 40 and ModelDiff 1 of 40.

So `make_pool` defaults to **converged** models of the owner's architecture families (mlp and cnn, the zoo's
default widths among smaller ones) on the owner's data distribution but never its data (the attacker split of
an embedded data set): each model trains in chunks of `CHUNK` epochs until its test accuracy has not improved by
`PLATEAU_TOL` for `PLATEAU_CHUNKS` chunks (at least `MIN_EPOCHS`, at most `MAX_EPOCHS`; on digits every default
architecture plateaus at 20-40 epochs, measured). A fixed `epochs` is still accepted (and recorded).

The folder holds the model files and a manifest `pool.json` (JSON, read bounded and validated field by field):
how the pool was made (data set, split, data seed, epochs or the convergence rule, seeds, learning rate,
architectures, the modelseal version) and for every reference its file, the file's SHA-256, its weights digest,
architecture and options, seed, data split and seed, epochs trained and test accuracy. `load_pool` refuses
(`ReferencePoolError`, one line) a folder without a manifest, a malformed or older-format manifest, and a model
file whose bytes or weights do not match it; it returns a `Pool` (a list of models that carries the manifest).

Coverage (`coverage`, called by every reference-null method with the suspect): the verdict's
`details["reference_pool"]` names the manifest (its SHA-256), the pool's accuracy range and architectures, and
the suspect's. Decided so:
- **refused** (`ReferencePoolError`): the suspect's accuracy on the pool's test data (measured when the pool's
  data set loads, the inputs fit, and the suspect has no query budget) lies outside the pool's 10 % to 90 %
  accuracy quantiles widened by `ACCURACY_MARGIN` -- the measured source of false accusations, so no p-value
  is given (benchmarks/references.py with the old 3-epoch pool: 40 of 40 converged independents refused);
- **flagged** (`flags` in the details; the verdict stands): the suspect's architecture is not among the pool's
  (or unknown: a black-box suspect), its accuracy could not be measured, references were given without a
  manifest (a list of models), or models were added to a pool outside its manifest.

The same pool format serves two roles that must never share a model: *extraction* references (the owner
selects examples that they do not carry, so the examples transfer less) and the *verifier's* references
(they estimate the null). `model_digest` identifies a model by its weights; a c-examples key records the
digests of its extraction references, and verification refuses a verifier reference among them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .errors import ModelError, ModelSealError, ReferencePoolError
from .runtime import track
from .safeio import loads_json, read_file, write_atomic
from .tensorfile import tensor_bytes

MANIFEST = "pool.json"
POOL_TYPE = "modelseal-reference-pool"
POOL_FORMAT = 2
MAX_POOL = 1000
MAX_MANIFEST_BYTES = 4 << 20  # 1000 entries of a few hundred bytes each, with room to spare
# Convergence rule of the default pool (epochs=None): chunks of CHUNK epochs until the test accuracy has not
# improved by PLATEAU_TOL for PLATEAU_CHUNKS chunks in a row, within [MIN_EPOCHS, MAX_EPOCHS].
CHUNK, PLATEAU_TOL, PLATEAU_CHUNKS, MIN_EPOCHS, MAX_EPOCHS = 5, 0.005, 2, 10, 100
# A suspect whose accuracy lies outside the pool's 10 % to 90 % accuracy quantiles by more than the margin is
# refused: a pool whose best few models barely reach the suspect's accuracy is no null for it (measured: the
# old 3-epoch pool, range 0.39-0.93, still let the lineage test's black-box part accuse 1 of the 3
# independents at 0.95 that a min/max range +-0.02 admitted).
COVER_QUANTILES = (0.1, 0.9)
ACCURACY_MARGIN = 0.02
# Architectures cycled through a pool: (zoo name, build options). Each family holds the zoo's default width (what
# an independent suspect is most likely to be) and smaller ones; all train in about a second on digits.
DEFAULT_ARCHS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "mlp": [("mlp", {}), ("mlp", {"hidden": [64]}), ("mlp", {"hidden": [64, 32]}), ("mlp", {"hidden": [128]})],
    "cnn": [("cnn", {}), ("cnn", {"channels": [8, 16], "hidden": 32}), ("cnn", {"channels": [16, 32], "hidden": 32})],
}
_FILE = re.compile(r"ref-\d{4}\.safetensors")
_HEX64 = re.compile(r"[0-9a-f]{64}")


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


class Pool(list[Any]):
    """The models of a reference pool (a list) with the manifest they were loaded from.

    `manifest` is the validated manifest, `manifest_sha256` the SHA-256 of its file's bytes, `extra` the
    number of models added outside the manifest (`plus`)."""

    def __init__(self, models: list[Any], manifest: dict[str, Any], manifest_sha256: str, folder: str,
                 extra: int = 0) -> None:
        super().__init__(models)
        self.manifest, self.manifest_sha256, self.folder, self.extra = manifest, manifest_sha256, folder, extra

    def plus(self, more: list[Any]) -> Pool:
        """This pool with `more` reference models added (recorded as outside the manifest)."""
        return Pool([*self, *more], self.manifest, self.manifest_sha256, self.folder, self.extra + len(more))


def _bad(path: Path, what: str) -> ReferencePoolError:
    return ReferencePoolError(f"{path} is not a valid reference pool manifest ({what}); remake the pool with "
                              "`modelseal references make`")


def validate_manifest(doc: Any, path: Path) -> dict[str, Any]:
    """The manifest `doc` (parsed JSON) checked field by field; ReferencePoolError names the first problem."""
    from . import models

    if not isinstance(doc, dict) or doc.get("type") != POOL_TYPE:
        raise _bad(path, f"type is not {POOL_TYPE}")
    if doc.get("format") != POOL_FORMAT:
        raise _bad(path, f"format {doc.get('format')!r}, this modelseal reads {POOL_FORMAT}: older pools record "
                         "no epochs or accuracy per model")
    st, entries = doc.get("settings"), doc.get("models")
    if not isinstance(st, dict) or not isinstance(entries, list) or len(entries) > MAX_POOL:
        raise _bad(path, f"needs settings and a list of at most {MAX_POOL} models")
    if not isinstance(doc.get("modelseal_version"), str):
        raise _bad(path, "no modelseal_version")
    ok = (isinstance(st.get("data"), str) and st.get("split") in ("attacker", "owner", "test")
          and _int(st.get("data_seed")) and _int(st.get("seed"))
          and (st.get("epochs") == "converged" or (_int(st.get("epochs")) and st["epochs"] >= 1))
          and isinstance(st.get("lr"), (int, float)) and isinstance(st.get("archs"), list))
    if not ok:
        raise _bad(path, "settings need data, split, data_seed, seed, epochs, lr and archs")
    for i, e in enumerate(entries):
        ok = (isinstance(e, dict) and isinstance(e.get("file"), str) and _FILE.fullmatch(e["file"]) is not None
              and isinstance(e.get("sha256"), str) and _HEX64.fullmatch(e["sha256"]) is not None
              and isinstance(e.get("digest"), str) and _HEX64.fullmatch(e["digest"]) is not None
              and e.get("arch") in models.names() and isinstance(e.get("options"), dict)
              and _int(e.get("seed")) and _int(e.get("data_seed")) and e.get("split") == st["split"]
              and e.get("data") == st["data"] and _int(e.get("epochs")) and 1 <= e["epochs"] <= 10_000
              and isinstance(e.get("test_accuracy"), (int, float)) and not isinstance(e["test_accuracy"], bool)
              and math.isfinite(e["test_accuracy"]) and 0.0 <= e["test_accuracy"] <= 1.0)
        if not ok:
            raise _bad(path, f"model entry {i} lacks or garbles file, sha256, digest, arch, options, seed, data, "
                             "split, data_seed, epochs or test_accuracy")
    return doc


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def read_manifest(folder: str | os.PathLike) -> tuple[dict[str, Any], str] | None:
    """(validated manifest, SHA-256 of its bytes) of a pool folder, or None when it has none."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    raw = read_file(path, ReferencePoolError, "reference pool manifest", MAX_MANIFEST_BYTES)
    doc = loads_json(raw, str(path), ReferencePoolError, max_bytes=MAX_MANIFEST_BYTES)
    return validate_manifest(doc, path), hashlib.sha256(raw).hexdigest()


def _converge(model: nn.Module, train_set: Any, test_set: Any, lr: float, seed: int, batch_size: int = 64,
              device: Any = "cpu") -> tuple[int, float]:
    """Train until the test accuracy plateaus (the module's convergence rule); (epochs, test accuracy).

    One uninterrupted `fit` (one optimizer), stopped early by the rule: what an independent model's owner would
    run. Restarting the optimizer every chunk instead gave CNNs measurably farther from an independent's outputs
    (SAC, ModelDiff)."""
    from .train import evaluate, fit

    state = {"best": -1.0, "acc": 0.0, "since": 0, "epochs": 0}

    def plateau(m: nn.Module, epoch: int) -> bool:
        state["epochs"] = epoch + 1
        if (epoch + 1) % CHUNK:
            return False
        state["acc"] = acc = float(evaluate(m, test_set))
        if acc > state["best"] + PLATEAU_TOL:
            state["best"], state["since"] = acc, 0
        else:
            state["since"] += 1
        return epoch + 1 >= MIN_EPOCHS and state["since"] >= PLATEAU_CHUNKS

    fit(model, train_set, epochs=MAX_EPOCHS, lr=lr, batch_size=batch_size, seed=seed, device=device, stop=plateau,
        progress=False)
    return int(state["epochs"]), float(evaluate(model, test_set))


def make_pool(data: str | Any, n: int, out: str | os.PathLike, *, archs: str | list[str] = "mlp,cnn",
              epochs: int | None = None, seed: int = 1000, split: str = "attacker", lr: float = 3e-3,
              data_seed: int = 0, batch_size: int = 64, device: str | torch.device | None = "cpu",
              progress: Any = None) -> dict[str, Any]:
    """Train (or reuse from `out`) `n` independent reference models; returns the manifest.

    Model i has architecture plan[i % len(plan)] and seed `seed + i`, trained in batches of `batch_size` on the
    `split` of `data` (a data set name, split with `data_seed`, or `Splits`), on `device` (auto | cpu | cuda),
    until its test accuracy plateaus (`epochs` None, the default) or for `epochs` epochs. Models already in the
    folder with the same settings are kept; a folder made with other settings is refused (use another folder).
    The batch size is a setting (it changes the models; recorded only when it is not the default 64); the
    device is not (it changes the models' bits, not their recipe)."""
    from . import data as data_mod
    from . import models
    from .models.io import load_model, save_model
    from .train import evaluate, fit

    n = int(n)
    if not 1 <= n <= MAX_POOL:
        raise ModelSealError(f"a reference pool holds 1 to {MAX_POOL} models, got {n}")
    if epochs is not None and int(epochs) < 1:
        raise ModelSealError(f"epochs must be >= 1 (or none: until converged), got {epochs}")
    name = data if isinstance(data, str) else getattr(getattr(data, "meta", None), "name", "custom")
    splits = data_mod.load(data, seed=int(data_seed)) if isinstance(data, str) else data
    if split not in ("attacker", "owner", "test"):
        raise ModelSealError(f"split must be attacker, owner or test, got {split!r}")
    train_set = getattr(splits, split)
    plan = arch_plan(archs)
    folder = Path(out)
    rule = {"chunk": CHUNK, "tolerance": PLATEAU_TOL, "chunks": PLATEAU_CHUNKS, "min_epochs": MIN_EPOCHS,
            "max_epochs": MAX_EPOCHS}
    settings = {"data": name, "split": split, "data_seed": int(data_seed), "seed": int(seed), "lr": float(lr),
                "epochs": "converged" if epochs is None else int(epochs),
                "convergence": (f"test accuracy plateau: chunks of {CHUNK} epochs until {PLATEAU_CHUNKS} chunks "
                                f"in a row gain under {PLATEAU_TOL}, {MIN_EPOCHS} to {MAX_EPOCHS} epochs"
                                if epochs is None else "fixed epochs"),
                "convergence_rule": rule if epochs is None else None,
                "archs": [[a, kw] for a, kw in plan]}
    if int(batch_size) != 64:
        settings["batch_size"] = int(batch_size)
    found = read_manifest(folder)
    doc = found[0] if found else None
    if doc is not None and doc.get("settings") != settings:
        raise ModelSealError(f"{folder} holds a reference pool made with other settings "
                             f"({doc.get('settings')}); use another --out folder")
    entries: list[dict[str, Any]] = list(doc["models"]) if doc else []
    folder.mkdir(parents=True, exist_ok=True)
    with track(progress, n, f"references {name}") as bar:
        bar.update(min(len(entries), n), info="cached")
        for i in range(len(entries), n):
            arch, kw = plan[i % len(plan)]
            s = int(seed) + i
            model = models.build(arch, splits.meta, seed=s, **kw)
            if epochs is None:
                trained, acc = _converge(model, train_set, splits.test, float(lr), s, int(batch_size), device)
            else:
                fit(model, train_set, epochs=int(epochs), lr=float(lr), batch_size=int(batch_size), seed=s,
                    device=device, progress=False)
                trained, acc = int(epochs), float(evaluate(model, splits.test))
            path = folder / _entry_name(i)
            save_model(model, path, force=True)
            digest = model_digest(load_model(path))
            entries.append({"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                            "digest": digest, "arch": arch, "options": kw, "seed": s, "data": name,
                            "split": split, "data_seed": int(data_seed), "epochs": trained,
                            "test_accuracy": round(acc, 4)})
            _write_manifest(folder, settings, entries)  # after every model: an interrupted pool resumes
            bar.update(i + 1, info=f"{arch} {trained} epochs, acc {acc:.3f}")
    if doc is None or len(entries) != len(doc["models"]):
        _write_manifest(folder, settings, entries)
    return {"type": POOL_TYPE, "format": POOL_FORMAT, "settings": settings, "models": entries[:n],
            "folder": str(folder), "size": len(entries), "modelseal_version": __version__}


def _write_manifest(folder: Path, settings: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    doc = {"type": POOL_TYPE, "format": POOL_FORMAT, "modelseal_version": __version__,
           "made_with": "modelseal.references.make_pool (CLI: modelseal references make)",
           "settings": settings, "models": entries}
    write_atomic(folder / MANIFEST, json.dumps(doc, indent=1, sort_keys=True), force=True)


def load_pool(folder: str | os.PathLike, n: int | None = None, device: str | torch.device = "cpu") -> Pool:
    """The models of a reference pool folder (the first `n`, default all) as a `Pool`, each model file checked
    against the SHA-256 and the weights digest the manifest records."""
    from .models.io import load_model

    folder = Path(folder)
    if not folder.is_dir():
        raise ReferencePoolError(f"reference pool {folder} is not a folder; make one with "
                                 "`modelseal references make`")
    found = read_manifest(folder)
    if found is None:
        raise ReferencePoolError(f"{folder} has no {MANIFEST}; make a reference pool with "
                                 "`modelseal references make`")
    doc, sha = found
    entries = doc["models"][: n if n is not None else None]
    if not entries:
        raise ReferencePoolError(f"reference pool {folder} holds no models")
    out = []
    for e in entries:
        path = folder / e["file"]
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != e["sha256"]:
            raise ReferencePoolError(f"{path} is missing or does not match the SHA-256 its pool manifest records; "
                                     "remake the pool")
        m = load_model(path, device=device)
        if model_digest(m) != e["digest"]:
            raise ModelError(f"{path} does not match the digest its pool records; remake the pool")
        out.append(m.eval())
    _check_accuracies(folder, doc, entries, out)
    if n is not None:
        doc = {**doc, "models": entries}
    return Pool(out, doc, sha, str(folder))


def _check_accuracies(folder: Path, doc: dict[str, Any], entries: list[dict[str, Any]], loaded: list[Any]) -> None:
    """Refuse a manifest whose recorded test accuracies are not the models' (an edited range would let a pool
    "cover" any suspect); skipped when the pool's data set does not load here (a user's own Splits)."""
    from . import data as data_mod
    from .train import evaluate

    st = doc["settings"]
    try:
        test = data_mod.load(st["data"], seed=int(st["data_seed"])).test
    except ModelSealError:
        return
    for e, m in zip(entries, loaded, strict=True):
        acc = float(evaluate(m, test))
        if abs(acc - float(e["test_accuracy"])) > 6e-4:  # recorded rounded to 4 decimals
            raise ReferencePoolError(f"{folder / MANIFEST} records test accuracy {e['test_accuracy']} for "
                                     f"{e['file']}, but the model scores {acc:.4f}: the manifest was edited; remake "
                                     "the pool")


def as_references(refs: Any, device: str | torch.device = "cpu") -> list[Any]:
    """A list of reference models from a list (models, Suspects, model files), a pool folder, or None. A pool
    (a folder, a `Pool`, or a list holding one pool folder among single models) comes back as a `Pool`."""
    if refs is None:
        return []
    if isinstance(refs, Pool):
        return refs
    if isinstance(refs, (str, os.PathLike)):
        return load_pool(refs, device=device)
    pools: list[Pool] = []
    singles: list[Any] = []
    for r in refs:
        if isinstance(r, (str, os.PathLike)) and Path(r).is_dir():
            pools.append(load_pool(r, device=device))
        elif isinstance(r, Pool):
            pools.append(r)
        else:
            singles.append(r)
    if len(pools) == 1:
        return pools[0].plus(singles)
    return [m for p in pools for m in p] + singles


def check_recorded_pool(pool: Any, references: int) -> None:
    """ValueError unless an evidence file's recorded reference pool (if any) is what verify records: a dict
    naming the manifest's SHA-256 and as many references as there are reference answers."""
    if pool is None:
        return
    if not isinstance(pool, dict) or not isinstance(pool.get("references"), int):
        raise ValueError("the recorded reference pool is malformed")
    if pool["references"] != references:
        raise ValueError(f"the recorded reference pool holds {pool['references']} references but the transcript "
                         f"has {references} reference answers")
    sha = pool.get("manifest_sha256")
    if pool.get("manifest") is not None and not (isinstance(sha, str) and len(sha) == 64):
        raise ValueError("the recorded reference pool names no manifest SHA-256")


def _arch_of(model: Any) -> str | None:
    from .models import spec_of

    module = model if isinstance(model, nn.Module) else getattr(model, "module", None)
    spec = spec_of(module) if isinstance(module, nn.Module) else None
    return str(spec["name"]) if spec else None


def coverage(refs: list[Any], suspect: Any) -> dict[str, Any]:
    """Whether the reference pool `refs` (from `as_references`) covers `suspect`: the details a verdict records
    (`details["reference_pool"]`), or ReferencePoolError when the suspect's accuracy lies outside the pool's.

    See the module docstring for what is refused and what is only flagged."""
    if not isinstance(refs, Pool):
        return {"manifest": None, "references": len(refs), "flags": [
            "references without a manifest (not a pool from `modelseal references make`): whether they are "
            "exchangeable with the suspect (converged, its architecture, its data distribution) is not checked"]}
    doc, st = refs.manifest, refs.manifest["settings"]
    accs = [float(e["test_accuracy"]) for e in doc["models"]]
    archs = sorted({str(e["arch"]) for e in doc["models"]})
    lo, hi = min(accs), max(accs)
    q = np.quantile(np.asarray(accs), COVER_QUANTILES)
    covered = (round(float(q[0]) - ACCURACY_MARGIN, 4), round(float(q[1]) + ACCURACY_MARGIN, 4))
    flags: list[str] = []
    info: dict[str, Any] = {
        "manifest": MANIFEST, "manifest_sha256": refs.manifest_sha256, "folder": refs.folder,
        "references": len(refs), "in_manifest": len(doc["models"]), "extra": refs.extra,
        "data": st["data"], "split": st["split"], "data_seed": st["data_seed"], "epochs": st["epochs"],
        "modelseal_version": doc["modelseal_version"], "architectures": archs, "accuracy_range": [lo, hi],
        "accuracy_covered": list(covered),
        "epochs_range": [min(e["epochs"] for e in doc["models"]), max(e["epochs"] for e in doc["models"])]}
    if refs.extra:
        flags.append(f"{refs.extra} reference model(s) added outside the manifest: not covered by it")
    kind = _arch_of(suspect)
    info["suspect_architecture"] = kind
    if kind is None:
        flags.append("the suspect's architecture is unknown (black-box or not a zoo model): not checked against "
                     f"the pool's ({', '.join(archs)})")
    elif kind not in archs:
        flags.append(f"the suspect is a '{kind}', the pool holds only {', '.join(archs)}: make a pool of its "
                     f"architecture (`modelseal references make --arch {kind}`)")
    acc, why = _suspect_accuracy(st, suspect)
    info["suspect_accuracy"] = acc
    if acc is None:
        flags.append(f"the suspect's accuracy was not measured ({why}): not checked against the pool's range "
                     f"{lo:.3f} to {hi:.3f}")
    elif not covered[0] <= acc <= covered[1]:
        raise ReferencePoolError(
            f"the reference pool does not cover the suspect: its test accuracy {acc:.3f} lies outside "
            f"{covered[0]:.3f} to {covered[1]:.3f} (the pool's {COVER_QUANTILES[0]:.0%} to {COVER_QUANTILES[1]:.0%} "
            f"accuracy quantiles +-{ACCURACY_MARGIN}), so the references are no null for it; use a pool of "
            "converged models like it (`modelseal references make`, default epochs)")
    info["flags"] = flags
    return info


def _suspect_accuracy(settings: dict[str, Any], suspect: Any) -> tuple[float | None, str]:
    """The suspect's accuracy on the pool's test split (asking it every test input), or (None, why not)."""
    from . import data as data_mod
    from .data import as_tensors
    from .suspect import as_suspect

    s = as_suspect(suspect)
    if s.remaining() is not None:
        return None, "the suspect has a query budget; the test split would spend it"
    try:
        x, y = as_tensors(data_mod.load(settings["data"], seed=int(settings["data_seed"])).test)
    except ModelSealError as e:
        return None, f"the pool's data set '{settings['data']}' does not load here: {str(e)[:80]}"
    if s.input_shape is not None and tuple(s.input_shape) != tuple(x.shape[1:]):
        return None, f"the suspect takes inputs {tuple(s.input_shape)}, the pool's data {tuple(x.shape[1:])}"
    pred = s.labels(x.float())
    return round(float((pred.reshape(-1).cpu() == y.reshape(-1)).float().mean()), 4), ""
