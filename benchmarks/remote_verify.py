"""Queries, seconds and bytes to a verdict over the Open Inference Protocol: binary tensors vs JSON vs in-process.

For each black-box method that is implemented (trigger-set, c-examples, tafa): make a key on a small
MNIST CNN, then verify the same model in-process and through a `modelseal.suspect.serve` server on
127.0.0.1, once with JSON tensors and once with binary tensors (the binary tensor data extension that
tritonclient uses by default). Ratios are measured inside this run; bytes are counted by an ASGI wrapper
around the server. Prints one JSON document. Usage: python benchmarks/remote_verify.py [--epochs 2] [--n 50]
[--quick]  (--quick, what the test runs: a digits CNN, 1 epoch, keys of 20, one repeat)
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import modelseal as ms
from modelseal import methods
from modelseal.suspect import Suspect, serve

BLACK_BOX = ["trigger-set", "c-examples", "tafa"]


def _key(name: str, model: torch.nn.Module, data: ms.data.Splits, n: int):
    cls = methods.get(name)
    if name == "trigger-set":
        return cls(n=n, extra_epochs=0).embed(model, data.owner)
    if name == "c-examples":
        return model, cls(variant="c", n=n).extract(model, data.meta)
    return model, cls(n=n).extract(model, data.meta)


class _Bytes:
    """ASGI wrapper counting request and response body bytes."""

    def __init__(self, app):
        self.app, self.sent, self.received = app, 0, 0

    async def __call__(self, scope, receive, send):
        async def counting_receive():
            msg = await receive()
            self.received += len(msg.get("body", b""))
            return msg

        async def counting_send(msg):
            self.sent += len(msg.get("body", b""))
            await send(msg)

        await self.app(scope, counting_receive, counting_send)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--n", type=int, default=50, help="key size (triggers / examples / boundary points)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="digits, 1 epoch, keys of 20, one repeat")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.n, args.repeats = 1, 20, 1

    data_name = "digits" if args.quick else "mnist5k"
    data = ms.data.load(data_name, seed=0)
    owner = ms.models.build("cnn", data.meta, seed=0)
    ms.train.fit(owner, data.owner, epochs=args.epochs, seed=0, progress=False)
    rows = []
    for name in BLACK_BOX:
        if name not in methods.names():
            rows.append({"method": name, "skipped": "not implemented"})
            continue
        t0 = time.perf_counter()
        model, key = _key(name, owner, data, args.n)
        row: dict = {"method": name, "key_seconds": round(time.perf_counter() - t0, 3)}
        app = serve.make_app(model)
        counted = _Bytes(app)
        with serve.background(counted) as base:
            url = base + "/v2/models/model"
            for where in ("in_process", "http_json", "http_binary"):
                best = float("inf")
                before = (app.state.stats["requests"], counted.received, counted.sent)
                for _ in range(args.repeats):
                    s = (Suspect(model, batch_size=args.batch_size) if where == "in_process"
                         else Suspect.load(url, batch_size=args.batch_size, binary=where == "http_binary"))
                    t0 = time.perf_counter()
                    v = ms.verify(s, key)
                    best = min(best, time.perf_counter() - t0)
                    if where != "in_process":
                        s._backend.close()
                row[where] = {"owned": v.owned, "p_value": v.p_value, "score": v.score, "queries": v.queries,
                              "seconds": round(best, 4)}
                if where != "in_process":
                    row[where].update({
                        "requests": (app.state.stats["requests"] - before[0]) // args.repeats,
                        "request_bytes": (counted.received - before[1]) // args.repeats,
                        "response_bytes": (counted.sent - before[2]) // args.repeats})
        ip, js, bn = row["in_process"], row["http_json"], row["http_binary"]
        row["same_verdict"] = all((r["owned"], r["queries"], r["p_value"]) == (ip["owned"], ip["queries"],
                                                                              ip["p_value"]) for r in (js, bn))
        row["json_vs_in_process"] = round(js["seconds"] / max(ip["seconds"], 1e-9), 2)
        row["binary_vs_in_process"] = round(bn["seconds"] / max(ip["seconds"], 1e-9), 2)
        row["json_vs_binary_seconds"] = round(js["seconds"] / max(bn["seconds"], 1e-9), 2)
        row["json_vs_binary_request_bytes"] = round(js["request_bytes"] / max(bn["request_bytes"], 1), 2)
        rows.append(row)
    print(json.dumps({"benchmark": "remote_verify", "model": f"cnn/{data_name}", "quick": args.quick,
                      "epochs": args.epochs,
                      "key_size": args.n, "batch_size": args.batch_size, "repeats": args.repeats,
                      "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                      "transport": "HTTP/1.1 over 127.0.0.1 (uvicorn + starlette); JSON vs binary tensor data "
                                   "extension (tritonclient's default)", "results": rows}, indent=2))


if __name__ == "__main__":
    main()
