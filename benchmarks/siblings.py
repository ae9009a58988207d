"""Similar is not stolen (issue 37): siblings of a public base model against TAFA and the keyless lineage test,
with and without the base taken into account. Prints one JSON object.

Setup (digits): a public base model trained on the test split; the owner fine-tunes it on the owner split and
extracts a TAFA key; `--siblings` innocent parties fine-tune the same base on their own halves of the attacker
split (their own seeds); the owner's copies: FTAL (2 epochs on the attacker split) and 50 % magnitude pruning.
For each architecture (MLP, CNN) it reports every model's score and p-value for:

- `tafa`: the shipped kink-correlation test (margin 0.1);
- `tafa_residual`: the same test on kinks minus the base's kinks (what a declared base would judge: the
  owner's contribution);
- `lineage`: the shipped keyless test (owner vs suspect);
- `lineage_delta`: the lineage test on weight updates (owner - base vs suspect - base), per part.

A candidate base-aware verdict is usable only if it owns the copies and none of the siblings. The JSON says,
per test, how many siblings it accuses at 1e-6 and 0.01 and how many copies it finds at 1e-6.

    python benchmarks/siblings.py [--quick] [--siblings N]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys

import numpy as np
import torch
from torch.utils.data import Subset

import modelseal as ms
from modelseal import methods, stats
from modelseal.lineage import lineage
from modelseal.methods import tafa as tafa_mod


def _fine_tune(model, data, seed: int, epochs: int):
    m = copy.deepcopy(model)
    ms.train.fit(m, data, epochs=epochs, seed=seed, progress=False)
    return m.eval()


def _delta(model, base):
    out = copy.deepcopy(model)
    ref = base.state_dict()
    out.load_state_dict({k: v - ref[k] for k, v in model.state_dict().items()})
    return out


def run(arch: str, siblings: int, points: int, permutations: int, epochs: int) -> dict:
    d = ms.data.load("digits", seed=0)
    base = ms.models.build(arch, d.meta, seed=100)
    ms.train.fit(base, d.test, epochs=15, seed=100, progress=False)
    base.eval()
    owner = _fine_tune(base, d.owner, 0, epochs)
    n = len(d.attacker)
    sibs = {}
    for i in range(siblings):
        idx = np.random.default_rng(i).choice(n, n // 2, replace=False).tolist()
        sibs[f"sibling-{i}"] = _fine_tune(base, Subset(d.attacker, idx), 10 + i, epochs)
    copies = {"ftal": ms.attacks.get("finetune")(mode="ftal", epochs=2, seed=1).apply(owner, d.attacker).eval(),
              "prune-50": ms.attacks.get("prune")(amount=0.5).apply(owner, d.attacker).eval()}
    key = methods.get("tafa")(n=points, seed=3).extract(owner, d.meta)
    inputs, own = tafa_mod._unpack(key)
    with torch.no_grad():
        base_out = base(inputs).double()
    own_res = stats.rank_standardize(tafa_mod._kinks(own.double()) - tafa_mod._kinks(base_out))
    owner_delta = _delta(owner, base)
    rows = {}
    for name, m in {"base": base, **copies, **sibs}.items():
        with torch.no_grad():
            out = m(inputs).double()
        plain = tafa_mod.kink_statistic(own.double(), out, margin=0.1)
        res = stats.paired_permutation_test(own_res, stats.rank_standardize(tafa_mod._kinks(out) -
                                                                            tafa_mod._kinks(base_out)), margin=0.1)
        lin = lineage(owner, m, permutations=permutations)
        row = {"tafa": [round(plain["score"], 3), plain["p_value"]],
               "tafa_residual": [round(res["score"], 3), res["p_value"]],
               "lineage": lin.p_value}
        if name != "base":
            ld = lineage(owner_delta, _delta(m, base), permutations=permutations)
            row["lineage_delta"] = {p["method"]: p["p_value"] for p in ld.details["verdicts"]}
            row["lineage_delta"]["fused"] = ld.p_value
        rows[name] = row

    def p_of(row: dict, test: str) -> float:
        v = row.get(test)
        return float(v[1] if isinstance(v, list) else v["fused"] if isinstance(v, dict) else v)

    summary = {}
    for test in ("tafa", "tafa_residual", "lineage", "lineage_delta"):
        sib_p = [p_of(rows[s], test) for s in sibs]
        copy_p = [p_of(rows[c], test) for c in copies]
        summary[test] = {"siblings_accused_1e-6": sum(p <= 1e-6 for p in sib_p),
                         "siblings_accused_0.01": sum(p <= 0.01 for p in sib_p), "siblings": len(sib_p),
                         "copies_found_1e-6": sum(p <= 1e-6 for p in copy_p), "copies": len(copy_p),
                         "separates": all(p > 0.01 for p in sib_p) and all(p <= 1e-6 for p in copy_p)}
    return {"arch": arch, "base_acc": ms.train.evaluate(base, d.test),
            "owner_acc": ms.train.evaluate(owner, d.test), "models": rows, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 siblings, 100 points, MLP only")
    ap.add_argument("--siblings", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    sibs = args.siblings or (3 if args.quick else 10)
    archs = ("mlp",) if args.quick else ("mlp", "cnn")
    out = {"benchmark": "siblings", "data": "digits", "siblings": sibs, "threads": 1}
    with contextlib.redirect_stdout(sys.stderr):
        out["results"] = [run(a, sibs, 100 if args.quick else 200, 999 if args.quick else 99_999, 4)
                          for a in archs]
    print(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
