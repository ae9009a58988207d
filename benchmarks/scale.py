"""Cost that scales with the model (issue 39 item 3): every protect and verify verb as a multiple of one epoch.

E = the wall time of one training epoch (`ms.train.fit`, batch 64, Adam) of the same model on 2,048 images of
its input size (the owner split repeated to 2,048), measured in the same run on one thread. Models: the zoo
CNN, the zoo ResNet-18 (width 64 = the standard 11.2 M parameters; `--width` scales it) and the zoo's small
ViT-style transformer, on 3x32x32 colour patches of scikit-learn's sample images (`sample-images`: 2 classes,
chance 0.5). Verbs: trigger-set embed/verify, tafa
extract/verify (n = 100), c-examples extract/verify (variant c, n = 100), deepmarks distribute (31 users on the
CNN, `--resnet-users` on the others)/trace (one copy), advparams lock/unlock, lineage (owner vs a fine-tuned
copy). For each: seconds, seconds / E, and the peak resident memory above the start of the verb (MB, sampled
from /proc/self/statm every 5 ms; torch's own allocations are not seen by tracemalloc), and what the verb
achieved (locked accuracy, users traced, ...). A verb that fails records its one-line error.

Before/after: run once on main's code (`PYTHONPATH=/path/to/main/src python benchmarks/scale.py --label
before`) and once on this branch (`--label after`); the figures measured are in the README and the methods'
docstrings.

    python benchmarks/scale.py [--quick] [--models cnn resnet18] [--verbs advparams deepmarks ...] [--label L]

`--quick` (what the test runs): the CNN and ResNet-18 at width 8, 2 owner epochs, 7 DeepMarks users, n = 20.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

import modelseal as ms
from modelseal.data import TensorData
from modelseal.errors import first_line

VERBS = ("trigger-set", "tafa", "c-examples", "deepmarks", "advparams", "lineage")


class PeakRSS:
    """Peak resident set size above the start, sampled every 5 ms from /proc/self/statm (MB)."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self.page
        except OSError:
            return 0

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._rss()
        self._stop = threading.Event()

        def poll() -> None:
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, self._rss())

        self._t = threading.Thread(target=poll, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mb(self) -> float:
        return round((self.peak - self.start) / 2**20, 1)


def measure(fn: Callable[[], Any], epoch: float) -> tuple[Any, dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with PeakRSS() as mem:
            t = time.perf_counter()
            try:
                out, err = fn(), None
            except Exception as e:  # noqa: BLE001 - a benchmark records what failed and goes on
                out, err = None, f"{type(e).__name__}: {first_line(e)}"
            s = time.perf_counter() - t
    row: dict[str, Any] = {"seconds": round(s, 2), "epochs_E": round(s / epoch, 3), "peak_mb": mem.mb}
    if err:
        row["error"] = err
    return out, row


def epoch_data(data: Any, n: int = 2048) -> TensorData:
    x, y = ms.data.as_tensors(data)
    reps = -(-n // len(x))
    return TensorData(x.repeat(reps, *([1] * (x.dim() - 1)))[:n], y.repeat(reps)[:n], data.meta)


def run_model(arch: str, args: argparse.Namespace, d: Any) -> dict[str, Any]:
    kw = {"width": args.width} if arch == "resnet18" else {}
    owner = ms.models.build(arch, d.meta, seed=0, **kw)
    ms.train.fit(owner, d.owner, epochs=args.owner_epochs, seed=0, progress=False)
    owner.eval()
    e_model = copy.deepcopy(owner)
    t = time.perf_counter()
    ms.train.fit(e_model, epoch_data(d.owner), epochs=1, seed=0, progress=False)
    epoch = time.perf_counter() - t
    res: dict[str, Any] = {"params": sum(p.numel() for p in owner.parameters()), "epoch_seconds": round(epoch, 2),
                           "owner_accuracy": round(ms.train.evaluate(owner, d.test), 4), "verbs": {}}
    verbs = res["verbs"]
    acc = lambda m: round(ms.train.evaluate(m, d.test), 4)  # noqa: E731
    n = args.n

    if "trigger-set" in args.verbs:
        out, row = measure(lambda: ms.methods.get("trigger-set")(n=n, seed=0).embed(copy.deepcopy(owner), d.owner,
                                                                                    progress=False), epoch)
        verbs["trigger-set embed"] = {**row, **({"accuracy": acc(out[0])} if out else {})}
        if out:
            v, row = measure(lambda: ms.verify(out[0], out[1]), epoch)
            verbs["trigger-set verify"] = {**row, **({"owned": v.owned} if v is not None else {})}
    if "tafa" in args.verbs:
        key, row = measure(lambda: ms.methods.get("tafa")(n=n, seed=0).extract(owner, d.meta, progress=False), epoch)
        verbs["tafa extract"] = row
        if key is not None:
            v, row = measure(lambda: ms.verify(owner, key), epoch)
            verbs["tafa verify"] = {**row, **({"owned": v.owned} if v is not None else {})}
    if "c-examples" in args.verbs:
        key, row = measure(lambda: ms.methods.get("c-examples")(n=n, seed=0).extract(owner, d.meta, progress=False),
                           epoch)
        verbs["c-examples extract"] = row
        if key is not None:
            v, row = measure(lambda: ms.verify(owner, key), epoch)
            verbs["c-examples verify"] = {**row, **({"match_rate": v.score} if v is not None else {})}
    if "deepmarks" in args.verbs:
        users = args.users if arch == "cnn" else args.resnet_users
        out, row = measure(lambda: ms.methods.get("deepmarks")(users=users, seed=0).distribute(owner, d.owner,
                                                                                              progress=False), epoch)
        verbs["deepmarks distribute"] = {**row, "users": users}
        if out:
            copies, key = out
            verbs["deepmarks distribute"]["copy_accuracy_min"] = min(acc(c) for c in copies)
            v, row = measure(lambda: ms.trace(ms.Suspect(copies[-1]), key), epoch)
            verbs["deepmarks trace"] = {**row, **({"traced": v.accused == [users - 1]} if v is not None else {})}
    if "advparams" in args.verbs:
        out, row = measure(lambda: ms.methods.get("advparams")(seed=0).lock(owner, d.owner), epoch)
        verbs["advparams lock"] = row
        if out:
            locked, key = out
            row.update(locked_accuracy=acc(locked), changed=key.params.get("changed"),
                       target_reached=key.params.get("target_reached"))
            back, row = measure(lambda: ms.unlock(locked, key), epoch)
            verbs["advparams unlock"] = {**row, **({"bit_exact": all(
                torch.equal(a, b) for a, b in zip(back.state_dict().values(), owner.state_dict().values(),
                                                  strict=True))} if back is not None else {})}
    if "lineage" in args.verbs:
        tuned = copy.deepcopy(owner)
        ms.train.fit(tuned, d.attacker, epochs=1, seed=1, progress=False)
        from modelseal.lineage import lineage

        v, row = measure(lambda: lineage(owner, tuned), epoch)
        verbs["lineage"] = {**row, **({"owned": v.owned, "p_value": v.p_value} if v is not None else {})}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cnn", "resnet18", "transformer"])
    ap.add_argument("--verbs", nargs="+", default=list(VERBS), choices=VERBS)
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 width (64: the standard)")
    ap.add_argument("--owner-epochs", type=int, default=2)
    ap.add_argument("--users", type=int, default=31, help="DeepMarks users on the CNN")
    ap.add_argument("--resnet-users", type=int, default=7, help="DeepMarks users on ResNet-18 and the transformer")
    ap.add_argument("--n", type=int, default=100, help="keys' size (triggers, boundary points, examples)")
    ap.add_argument("--label", default="")
    ap.add_argument("--quick", action="store_true", help="CNN + width-8 ResNet-18, 2 owner epochs, 7 users, n = 20")
    args = ap.parse_args()
    if args.quick:
        args.width, args.owner_epochs, args.users, args.resnet_users, args.n = 8, 2, 7, 7, 20
        args.models = [m for m in args.models if m != "transformer"]
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    d = ms.data.load("sample-images", seed=0)
    out: dict[str, Any] = {"label": args.label, "data": "sample-images 3x32x32 (2 classes)", "threads": 1,
                           "quick": args.quick, "models": {}}
    for arch in args.models:
        out["models"][arch if arch != "resnet18" else f"resnet18-w{args.width}"] = run_model(arch, args, d)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
