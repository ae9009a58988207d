"""Keyless lineage test (`modelseal.lineage`) judged on populations of digits models (issue 28 item 3).

One owner per architecture (zoo `mlp` (256, 128) and `cnn`, seed 0, owner split of scikit-learn's 8x8
`digits`). Negatives: `--models` independent models per architecture (seeds 1000.., alternately the owner's
split -- the same data -- and the attacker split), judged against the owner of their own architecture (the
hard case: same architecture). References for the black-box part: `--references` models per architecture
(seeds 500.., same recipe). Positives: the owner under FTAL, magnitude pruning (50 %), structured pruning
(50 % + 2 epochs), unit permutation, 4-bit quantisation, and a model trained from the owner's initial weights
on the attacker split (shared initialisation is lineage).

Prints JSON: per part (exact `lineage-weights`, `lineage-aligned`, `lineage-outputs`, fused `lineage`) the
number of independents judged, accused at alpha, the smallest p-value, the fractions below 0.01 and 0.05;
the KS p-value of the exact part's p-values on the independents (uniform under its null); the p-values the
aligned part would give under a random-matching null (the union bound, not used: shows why); and per attack
and architecture which part finds the copy. Run: `python benchmarks/lineage.py --models 50`; `--quick` (what the
test runs): 3 independents and 2 references per architecture, 5 epochs, 999 permutations.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import modelseal as ms
from modelseal import stats
from modelseal.lineage import agreements, chain, lineage


def trained(data, arch: str, seed: int, split, epochs: int):
    m = ms.models.build(arch, data.meta, seed=seed)
    ms.train.fit(m, split, epochs=epochs, seed=seed, progress=False)
    return m.eval()


def parts(v) -> dict[str, dict]:
    out = {d["method"]: d for d in v.details["verdicts"]}
    out["lineage"] = v.to_dict()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=50, help="independent models per architecture")
    ap.add_argument("--references", type=int, default=4, help="reference models per architecture")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--permutations", type=int, default=9999)
    ap.add_argument("--alpha", type=float, default=1e-6)
    ap.add_argument("--quick", action="store_true", help="3 independents, 2 references, 5 epochs, 999 permutations")
    args = ap.parse_args()
    if args.quick:
        args.models, args.references, args.epochs, args.permutations = 3, 2, 5, 999
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    d = ms.data.load("digits", seed=0)
    archs = ("mlp", "cnn")
    owners = {a: trained(d, a, 0, d.owner, args.epochs) for a in archs}
    refs = [trained(d, a, 500 + i, d.attacker if i % 2 else d.owner, args.epochs)
            for i in range(args.references) for a in archs]
    rule = {"permutations": args.permutations, "alpha": args.alpha, "queries": 1000}
    null: dict[str, list[float]] = {}
    random_matching: list[float] = []
    agree_frac: dict[str, list[float]] = {a: [] for a in archs}
    for a in archs:
        for i in range(args.models):
            indep = trained(d, a, 1000 + i, d.owner if i % 2 else d.attacker, args.epochs)
            v = lineage(owners[a], indep, refs, seed=i, **rule)
            for name, p in parts(v).items():
                null.setdefault(name, []).append(float(p["p_value"]))
            per = agreements(chain(owners[a]), chain(indep))  # type: ignore[arg-type]
            agree_frac[a] += [x["k"] / x["m"] for x in per]
            random_matching.append(min(1.0, len(per) * min(stats.matching_agreement_bound(x["k"], x["m"], x["n"])
                                                            for x in per)))
    negatives = {name: {"n": len(ps), "accused": int(np.sum(np.asarray(ps) <= args.alpha)), "min_p": min(ps),
                        "frac_below_0.01": float(np.mean(np.asarray(ps) <= 0.01)),
                        "frac_below_0.05": float(np.mean(np.asarray(ps) <= 0.05))} for name, ps in null.items()}
    negatives["lineage-weights"]["ks_uniform_p"] = stats.ks_uniform(null["lineage-weights"])
    att = ms.attacks.get
    attacks = {
        "ftal": lambda m: att("finetune")(mode="ftal", epochs=3).apply(m, d.attacker),
        "prune-50%": lambda m: att("prune")(amount=0.5).apply(m, d.attacker),
        "structured-prune-50%": lambda m: att("structured-prune")(amount=0.5, epochs=2).apply(m, d.attacker),
        "permute": lambda m: att("permute")(seed=1).apply(m, d.attacker),
        "quantize-4bit": lambda m: att("quantize")(bits=4).apply(m, d.attacker),
    }
    positives: dict[str, dict] = {}
    for a in archs:
        copies = {name: f(owners[a]) for name, f in attacks.items()}
        copies["same-init-other-data"] = trained(d, a, 0, d.attacker, args.epochs)
        for name, c in copies.items():
            v = lineage(owners[a], c, refs, **rule)
            positives[f"{a}/{name}"] = {k: (p["p_value"] if p.get("judged", True) else "not judged")
                                        for k, p in parts(v).items()}
            positives[f"{a}/{name}"]["owned"] = v.owned
    found = {part: float(np.mean([isinstance(r[part], float) and r[part] <= args.alpha
                                  for r in positives.values()]))
             for part in ("lineage-weights", "lineage-aligned", "lineage-outputs", "lineage")}
    print(json.dumps({
        "data": "digits", "quick": args.quick, "alpha": args.alpha, "permutations": args.permutations,
        "epochs": args.epochs,
        "references": len(refs), "independents": 2 * args.models, "negatives": negatives,
        "aligned_agreement_fraction_independents": {a: {"max": max(v), "mean": float(np.mean(v))}
                                                    for a, v in agree_frac.items()},
        "aligned_random_matching_null_would_accuse": int(np.sum(np.asarray(random_matching) <= args.alpha)),
        "aligned_random_matching_null_min_p": min(random_matching),
        "positives": positives, "fraction_found_by_part": found,
        "wall_s": round(time.perf_counter() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()
