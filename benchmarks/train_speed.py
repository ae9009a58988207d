"""Samples/s of modelseal.train.fit vs a bare hand-written PyTorch loop on the same model and data.

Prints JSON with both rates and their ratio (goal >= 0.9 on CPU and CUDA). Both loops run in the same
process, alternating, and the best of several rounds is taken for each so that machine noise hits both.
The bare loop holds the whole data set on the device; `fit` streams one batch at a time, so on CUDA the ratio
includes the cost of that copy.

    python benchmarks/train_speed.py [--device auto|cpu|cuda] [--quick]   # --quick: digits, 1 epoch, 2 rounds
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

import modelseal as ms


def bare_loop(model, x, y, epochs, batch_size, seed, device):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    amp = device.type == "cuda"
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen).to(device)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x[idx]).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="digits, 1 epoch, 2 rounds (what the test runs)")
    args = ap.parse_args()
    device = ms.runtime.resolve_device(args.device)
    data_name = "digits" if args.quick else "mnist5k"
    splits = ms.data.load(data_name)
    x, y = splits.owner.x.to(device), splits.owner.y.to(device)
    epochs, batch_size, rounds = (1, 64, 2) if args.quick else (2, 64, 3)
    fit_rates, bare_rates = [], []
    for r in range(rounds):
        m = ms.models.build("cnn", splits.meta, seed=r).to(device)
        sync(device)
        t = time.perf_counter()
        ms.train.fit(m, splits.owner, epochs=epochs, batch_size=batch_size, seed=r, progress=False)
        sync(device)
        fit_rates.append(epochs * len(x) / (time.perf_counter() - t))
        m = ms.models.build("cnn", splits.meta, seed=r).to(device)
        sync(device)
        t = time.perf_counter()
        bare_loop(m, x, y, epochs, batch_size, r, device)
        sync(device)
        bare_rates.append(epochs * len(x) / (time.perf_counter() - t))
    out = {"device": str(device), "torch": torch.__version__, "model": "cnn", "data": f"{data_name} owner split",
           "quick": args.quick,
           "samples": len(x), "epochs": epochs, "batch_size": batch_size,
           "fit_samples_per_s": max(fit_rates), "bare_samples_per_s": max(bare_rates),
           "ratio": max(fit_rates) / max(bare_rates), "goal": ">= 0.9"}
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
