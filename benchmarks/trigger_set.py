"""Trigger-set watermark benchmark on mnist5k (LeNet CNN): cost, fidelity, robustness, queries.

Prints one JSON object: embed time over plain fine-tuning time for the same epochs (goal <= 1.25),
clean accuracy change, trigger accuracy, and trigger accuracy plus verdict after FTLL, FTAL, RTLL, RTAL
(5 epochs on the attacker split) and magnitude pruning at 20/50/80 %, independent models as a control,
and the queries needed for a verdict against the fixed-sample minimum. Runs in a few minutes on a CPU.

`rejection` (issue 29): each trigger kind (abstract, noise, content; n = 100, the defaults) embedded into a
digits CNN owner, then judged behind a query-rejection thief (reject-mahalanobis, reject-softmax: flagged
queries answered with the second-best class) whose detector flags 5 % of the attacker split, or 5 % of the
test split itself (exactly 5 % false rejections on test data); per kind: clean and trigger accuracy, the share
of test answers and of triggers rejected, the p-value and whether the mark is owned at 1e-6.
`--only-rejection` runs just that part.

    python benchmarks/trigger_set.py [--seed 0] [--n 100] [--only-rejection] [--quick]

`--quick` (what the test runs): the same measurements on scikit-learn `digits` with 30 triggers, FTAL and RTAL
for 2 epochs, pruning at 50 %, and the rejection part for the abstract kind only.
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
    ap.add_argument("--only-rejection", action="store_true")
    ap.add_argument("--quick", action="store_true", help="digits, 30 triggers, fewer attacks (what the test runs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kinds = ("abstract",) if args.quick else ("abstract", "noise", "content")
    if args.quick:
        args.n = 30
    if args.only_rejection:
        print(json.dumps({"rejection": rejection(args.n, kinds)}, indent=1))
        return

    data_name = "digits" if args.quick else "mnist5k"
    data = ms.data.load(data_name, seed=args.seed)
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
    for mode in ("ftal", "rtal") if args.quick else ("ftll", "ftal", "rtll", "rtal"):
        attacks[mode] = judge(ms.attacks.get("finetune")(mode=mode, epochs=2 if args.quick else 5, seed=args.seed)
                              .apply(marked, data.attacker))
    for amount in (0.5,) if args.quick else (0.2, 0.5, 0.8):
        attacks[f"prune{int(amount * 100)}"] = judge(ms.attacks.get("prune")(amount=amount).apply(marked))

    independent = []
    for arch, s in (("cnn", 101), ("mlp", 102)):
        m = ms.models.build(arch, data.meta, seed=s)
        ms.train.fit(m, data.attacker, epochs=5, seed=s, progress=False)
        independent.append({"arch": arch, **judge(m)})

    marked_v = judge(marked)
    out = {
        "dataset": data_name, "quick": args.quick, "model": "cnn", "n_triggers": args.n, "seed": args.seed,
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
        "rejection": rejection(args.n, kinds),
    }
    print(json.dumps(out, indent=1))


def rejection(n: int, kinds: tuple[str, ...] = ("abstract", "noise", "content")) -> dict:
    """Every trigger kind behind the query-rejection attacks (see the module docstring)."""
    d = ms.data.load("digits", seed=0)
    owner = ms.models.build("cnn", d.meta, seed=0)
    ms.train.fit(owner, d.owner, epochs=6, seed=0, progress=False)
    x, _ = ms.data.as_tensors(d.test)
    out: dict = {"dataset": "digits", "model": "cnn", "n": n,
                 "test_acc_owner": round(ms.train.evaluate(owner, d.test), 3), "kinds": {}}
    for kind in kinds:
        t0 = time.perf_counter()
        marked, key = ms.methods.get("trigger-set")(n=n, seed=5, kind=kind).embed(copy.deepcopy(owner), d.owner,
                                                                                  progress=False)
        secs = time.perf_counter() - t0
        trig = key.tensors["images"]
        row: dict = {"embed_s": round(secs, 1), "test_acc": round(ms.train.evaluate(marked, d.test), 3),
                     "trigger_acc": round(trigger_accuracy(marked, trig, key.tensors["labels"]), 3),
                     "cluster_weight": key.params["cluster_weight"], "p_value": ms.verify(marked, key).p_value}
        for name in ("reject-mahalanobis", "reject-softmax"):
            for fitted, split in (("attacker", d.attacker), ("test", d.test)):
                a = ms.attacks.get(name)(reject_rate=0.05, answer="second")
                model = a.apply(marked, split)
                s = a.wrap(ms.Suspect(model))
                plain = ms.Suspect(model)
                v = ms.verify(s, key)
                row[f"{name}/{fitted}"] = {
                    "test_rejected": round(float((s.labels(x) != plain.labels(x)).float().mean()), 3),
                    "triggers_rejected": round(float((s.labels(trig) != plain.labels(trig)).float().mean()), 3),
                    "p_value": float(f"{v.p_value:.3g}"), "owned": v.owned, "queries": v.queries}
        out["kinds"][kind] = row
    return out


def _counting_fit(counter: dict):
    """`fit` that records how many epochs it ran (embedding stops early; plain tuning then matches it)."""
    def wrapped(*a, **kw):
        hist = ms.train.fit(*a, **kw)
        counter["epochs"] = hist["epochs"]
        return hist

    return wrapped


if __name__ == "__main__":
    main()
