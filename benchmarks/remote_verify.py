"""Queries and seconds to a verdict over HTTP (Open Inference Protocol, loopback) vs. in-process.

For each black-box method that is implemented (trigger-set, c-examples, tafa): make a key on a small
MNIST CNN, then verify the same model in-process and through a `modelseal.suspect.serve` server on 127.0.0.1.
Prints one JSON document. Usage: python benchmarks/remote_verify.py [--epochs 2] [--n 50]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import modelseal as ms
from modelseal import methods, serve
from modelseal.suspect import Suspect

BLACK_BOX = ["trigger-set", "c-examples", "tafa"]


def _key(name: str, model: torch.nn.Module, data: ms.data.Splits, n: int):
    cls = methods.get(name)
    if name == "trigger-set":
        return cls(n=n, extra_epochs=0).embed(model, data.owner)
    if name == "c-examples":
        return model, cls(variant="c", n=n).extract(model, data.meta)
    return model, cls(n=n).extract(model, data.meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--n", type=int, default=50, help="key size (triggers / examples / boundary points)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    data = ms.data.load("mnist5k", seed=0)
    owner = ms.models.build("cnn", data.meta, seed=0)
    ms.train.fit(owner, data.owner, epochs=args.epochs, seed=0, progress=False)
    rows = []
    for name in BLACK_BOX:
        if name not in methods.names():
            rows.append({"method": name, "skipped": "not implemented"})
            continue
        t0 = time.perf_counter()
        model, key = _key(name, owner, data, args.n)
        make_s = time.perf_counter() - t0
        row: dict = {"method": name, "key_seconds": round(make_s, 3)}
        app = serve.make_app(model)
        with serve.background(app) as base:
            url = serve.model_url("127.0.0.1", int(base.rsplit(":", 1)[1]))
            for where in ("in_process", "http"):
                best = float("inf")
                for _ in range(args.repeats):
                    s = (Suspect(model, batch_size=args.batch_size) if where == "in_process"
                         else Suspect.load(url, batch_size=args.batch_size))
                    t0 = time.perf_counter()
                    v = ms.verify(s, key)
                    best = min(best, time.perf_counter() - t0)
                row[where] = {"owned": v.owned, "p_value": v.p_value, "score": v.score, "queries": v.queries,
                              "seconds": round(best, 4)}
        row["http_requests"] = app.state.stats["requests"] // args.repeats
        row["same_verdict"] = (row["in_process"]["owned"] == row["http"]["owned"]
                               and row["in_process"]["queries"] == row["http"]["queries"])
        row["slowdown"] = round(row["http"]["seconds"] / max(row["in_process"]["seconds"], 1e-9), 2)
        rows.append(row)
    print(json.dumps({"benchmark": "remote_verify", "model": "cnn/mnist5k", "epochs": args.epochs,
                      "key_size": args.n, "batch_size": args.batch_size, "repeats": args.repeats,
                      "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                      "transport": "HTTP/1.1 JSON over 127.0.0.1 (uvicorn + starlette)", "results": rows},
                     indent=2))


if __name__ == "__main__":
    main()
