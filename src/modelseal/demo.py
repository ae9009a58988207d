"""The main job behind `modelseal demo`: protect an owner CNN on mnist5k with every registered method,
attack the protected models, and judge them and independently trained models.

Everything is reached through the registries; a method that is not installed is skipped. Results are
written as JSON to the output folder (never overwritten without force).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import attacks, data, methods, models, train
from .api import trace, unlock, verify
from .errors import OutputExistsError
from .suspect import Suspect

ATTACKS = [("finetune", {"mode": "ftal", "epochs": 2}), ("prune", {"amount": 0.5}), ("quantize", {"bits": 8})]


def _row(protection: str, model: str, acc: float, verdict: str, detail: str) -> dict[str, Any]:
    return {"protection": protection, "model": model, "accuracy": acc, "verdict": verdict, "detail": detail}


def run_demo(out_dir: str | Path = "demo-out", device: str = "auto", seed: int = 0, force: bool = False,
             progress: Any = None) -> dict[str, Any]:
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise OutputExistsError(f"{out_dir} already exists and is not empty; pass --force to overwrite it")
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dev = train.resolve_device(device)
    splits = data.load("mnist5k", seed=seed)
    owner = models.build("cnn", splits.meta, seed=seed).to(dev)
    train.fit(owner, splits.owner, epochs=5, seed=seed, progress=progress, description="owner cnn")
    owner_acc = train.evaluate(owner, splits.test)
    rows = [_row("-", "owner cnn", owner_acc, "-", "5 epochs on the owner split")]
    negative = models.build("cnn", splits.meta, seed=seed + 1000).to(dev)
    train.fit(negative, splits.attacker, epochs=5, seed=seed + 1000, progress=progress, description="independent")
    available_attacks = set(attacks.names())

    def attacked(model):
        for name, params in ATTACKS:
            if name in available_attacks:
                yield f"{name} {params}", attacks.get(name)(seed=seed, **params).apply(model, splits.attacker)

    def judge(label: str, key, target, extra_models):
        for mname, m in [(label, target), *attacked(target), ("independent cnn", negative), *extra_models]:
            v = verify(Suspect(m), key)
            rows.append(_row(key.method, mname, train.evaluate(m, splits.test),
                             "OWNED" if v.owned else "not owned", f"p = {v.p_value:.2g}, {v.queries} queries"))

    names = methods.names()
    if "trigger-set" in names:
        marked, key = methods.get("trigger-set")(seed=seed).embed(owner, splits.owner, progress=progress)
        judge("watermarked", key, marked, [])
    for fp in ("c-examples", "tafa"):
        if fp in names:
            key = methods.get(fp)(seed=seed).extract(owner, splits.meta, progress=progress)
            judge("owner", key, owner, [])
    if "deepmarks" in names:
        copies, key = methods.get("deepmarks")(seed=seed, users=31).distribute(owner, splits.owner,
                                                                                progress=progress)
        for label, m in [("copy of user 3", copies[3]), ("independent cnn", negative)]:
            r = trace(Suspect(m), key)
            rows.append(_row("deepmarks", label, train.evaluate(m, splits.test),
                             f"accused {list(r.accused)}" if r.accused else "nobody accused", ""))
        if "average" in available_attacks:
            avg = attacks.get("average")(others=[copies[7], copies[12]]).apply(copies[3])
            r = trace(Suspect(avg), key)
            rows.append(_row("deepmarks", "average of users 3, 7, 12", train.evaluate(avg, splits.test),
                             f"accused {list(r.accused)}" if r.accused else "nobody accused", ""))
    if "advparams" in names:
        locked, key = methods.get("advparams")(seed=seed).lock(owner, splits.owner, progress=progress)
        rows.append(_row("advparams", "locked", train.evaluate(locked, splits.test), "-",
                         f"{len(key.tensors.get('original', []))} parameters changed"))
        rows.append(_row("advparams", "unlocked", train.evaluate(unlock(locked, key), splits.test), "-",
                         "bit-exact restore"))
    seconds = time.perf_counter() - t0
    result = {"data": "mnist5k", "owner_accuracy": owner_acc, "rows": rows, "seconds": seconds,
              "out_dir": str(out_dir)}
    (out_dir / "demo.json").write_text(json.dumps(result, indent=2))
    models.save_model(owner, out_dir / "owner.safetensors", force=True)
    return result
