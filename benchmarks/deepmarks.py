"""DeepMarks benchmark on mnist5k (CNN): prints one JSON object.

Reports each copy's test accuracy (and the owner's), the distribution time per copy relative to one plain
fine-tuning epoch on the same data, and for K = 1..6 colluders averaging their copies (6 is past the
design's bound of k - 1 = 5) how many colluders are found and how many innocents accused, with no further
attack, after 50 % global magnitude pruning, and after 2 epochs of fine-tuning on the attacker split.

    python benchmarks/deepmarks.py [--coalitions 20] [--finetune-coalitions 5] [--device auto]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

import modelseal as ms


def average(models):
    try:
        return ms.attacks.get("average")(others=models[1:]).apply(models[0])
    except ms.ModelSealError:
        out = copy.deepcopy(models[0])
        sds = [m.state_dict() for m in models]
        out.load_state_dict({k: torch.stack([sd[k].float() for sd in sds]).mean(0).to(sds[0][k].dtype)
                             for k in sds[0]})
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--coalitions", type=int, default=20)
    ap.add_argument("--finetune-coalitions", type=int, default=5)
    ap.add_argument("--users", type=int, default=31)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    dev = ms.runtime.resolve_device(args.device)

    data = ms.data.load("mnist5k", seed=0)
    owner = ms.models.build("cnn", data.meta, seed=args.seed).to(dev)
    ms.train.fit(owner, data.owner, epochs=5, seed=args.seed, progress=False)
    owner_acc = ms.train.evaluate(owner, data.test)

    plain = copy.deepcopy(owner)
    t0 = time.perf_counter()
    ms.train.fit(plain, data.owner, epochs=1, seed=args.seed + 1, progress=False)
    plain_epoch = time.perf_counter() - t0

    method = ms.methods.get("deepmarks")(users=args.users, seed=args.seed)
    t0 = time.perf_counter()
    copies, key = method.distribute(owner, data.owner, progress=False)
    per_copy = (time.perf_counter() - t0) / len(copies)
    accs = [ms.train.evaluate(c, data.test) for c in copies]
    single = [ms.trace(c, key).accused == [j] for j, c in enumerate(copies)]

    attacks = {
        "none": None,
        "prune-50%": ms.attacks.get("prune")(amount=0.5),
        "finetune-2ep": ms.attacks.get("finetune")(mode="ftal", epochs=2, seed=args.seed),
    }
    rng = np.random.default_rng(args.seed)
    k = key.params["k"]
    collusion = {}
    for size in range(1, 7):
        coals = [sorted(rng.choice(len(copies), size=size, replace=False).tolist())
                 for _ in range(args.coalitions)]
        row = {}
        for name, attack in attacks.items():
            use = coals if name != "finetune-2ep" else coals[: args.finetune_coalitions]
            found = innocents = exact = framed = 0
            fits = []
            for coal in use:
                model = average([copies[j] for j in coal])
                if attack is not None:
                    model = attack.apply(model, data.attacker)
                res = ms.trace(model, key)
                acc = set(res.accused)
                found += len(acc & set(coal))
                bad = len(acc - set(coal))
                innocents += bad
                framed += bad > 0
                exact += acc == set(coal)
                fits.append(res.details["fit"])
            row[name] = {"coalitions": len(use), "colluders_found": found / (size * len(use)),
                         "all_found_exactly": exact / len(use), "innocents_accused": innocents,
                         "coalitions_with_an_innocent_accused": framed, "mean_fit": float(np.mean(fits))}
        collusion[str(size)] = row

    independent = []
    for s in (1, 2, 3):
        m = ms.models.build("cnn", data.meta, seed=100 + s).to(dev)
        ms.train.fit(m, data.attacker, epochs=5, seed=100 + s, progress=False)
        r = ms.trace(m, key)
        independent.append({"accused": r.accused, "p_value": r.p_value})

    print(json.dumps({
        "method": "deepmarks", "dataset": "mnist5k", "model": "cnn", "device": str(dev),
        "users": len(copies), "v": key.params["v"], "k": k, "max_colluders": k - 1,
        "layer": key.params["layer"], "gamma": key.params["gamma"], "epochs_per_copy": key.params["epochs"],
        "owner_accuracy": owner_acc, "copy_accuracy": accs,
        "copy_accuracy_min_delta": min(accs) - owner_acc,
        "distribution_time_per_copy_over_plain_epoch": per_copy / plain_epoch,
        "single_copies_traced_exactly": sum(single),
        "collusion_by_averaging": collusion, "independent_models": independent,
    }, indent=1))


if __name__ == "__main__":
    main()
