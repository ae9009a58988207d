"""Trigger-set watermark benchmark on mnist5k (LeNet CNN): cost, fidelity, robustness, queries.

Prints one JSON object: embed time over plain fine-tuning time for the same epochs (goal <= 1.25),
clean accuracy change, trigger accuracy, and trigger accuracy plus verdict after FTLL, FTAL, RTLL, RTAL
(5 epochs on the attacker split) and magnitude pruning at 20/50/80 %, independent models as a control,
and the queries needed for a verdict against the fixed-sample minimum. Runs in a few minutes on a CPU.

    python benchmarks/trigger_set.py [--seed 0] [--n 100]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import modelseal as ms
import modelseal.methods.trigger_set as ts
from modelseal.methods.trigger_set import trigger_accuracy
from modelseal.stats import min_queries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = ms.data.load("mnist5k", seed=args.seed)
    owner = ms.models.build("cnn", data.meta, seed=args.seed)
    ms.train.fit(owner, data.owner, epochs=5, seed=args.seed, progress=False)
    acc_owner = ms.train.evaluate(owner, data.test)

    method = ms.methods.get("trigger-set")(n=args.n, seed=args.seed)
    counter = {"epochs": 0}
    ts.fit = _counting_fit(counter)
    try:
        t0 = time.perf_counter()
        marked, key = method.embed(owner, data.owner, progress=False)
        t_embed = time.perf_counter() - t0
    finally:
        ts.fit = ms.train.fit
    images, labels = key.tensors["images"], key.tensors["labels"]

    # Plain fine-tuning for as many epochs as embedding actually ran, at the same learning rate.
    epochs_run = counter["epochs"]
    plain = copy.deepcopy(owner)
    t0 = time.perf_counter()
    ms.train.fit(plain, data.owner, epochs=epochs_run, lr=3e-3, seed=args.seed, progress=False)
    t_plain = time.perf_counter() - t0

    def judge(model: torch.nn.Module) -> dict:
        v = ms.verify(model, key)
        return {"test_acc": round(ms.train.evaluate(model, data.test), 4),
                "trigger_acc": round(trigger_accuracy(model, images, labels), 4),
                "owned": v.owned, "p_value": v.p_value, "queries": v.queries, "stop": v.details["stop"]}

    attacks = {}
    for mode in ("ftll", "ftal", "rtll", "rtal"):
        attacks[mode] = judge(ms.attacks.get("finetune")(mode=mode, epochs=5, seed=args.seed)
                              .apply(marked, data.attacker))
    for amount in (0.2, 0.5, 0.8):
        attacks[f"prune{int(amount * 100)}"] = judge(ms.attacks.get("prune")(amount=amount).apply(marked))

    independent = []
    for arch, s in (("cnn", 101), ("mlp", 102)):
        m = ms.models.build(arch, data.meta, seed=s)
        ms.train.fit(m, data.attacker, epochs=5, seed=s, progress=False)
        independent.append({"arch": arch, **judge(m)})

    marked_v = judge(marked)
    out = {
        "dataset": "mnist5k", "model": "cnn", "n_triggers": args.n, "seed": args.seed,
        "k_per_batch": "auto", "embed_epochs": epochs_run,
        "embed_time_s": round(t_embed, 2), "plain_finetune_time_s": round(t_plain, 2),
        "time_ratio": round(t_embed / t_plain, 3), "time_ratio_goal": 1.25,
        "test_acc_owner": round(acc_owner, 4), "test_acc_marked": marked_v["test_acc"],
        "test_acc_plain_finetune": round(ms.train.evaluate(plain, data.test), 4),
        "acc_change_points": round(100 * (marked_v["test_acc"] - acc_owner), 2),
        "trigger_acc_owner_before": round(trigger_accuracy(owner, images, labels), 4),
        "marked": marked_v,
        "attacks": attacks,
        "independent": independent,
        "queries_to_verdict": marked_v["queries"], "min_queries": min_queries(0.1, 1e-6),
    }
    print(json.dumps(out, indent=1))


def _counting_fit(counter: dict):
    """`fit` that records how many epochs it ran (embedding stops early; plain tuning then matches it)."""
    def wrapped(*a, **kw):
        hist = ms.train.fit(*a, **kw)
        counter["epochs"] = hist["epochs"]
        return hist

    return wrapped


if __name__ == "__main__":
    main()
