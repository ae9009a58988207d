"""Characteristic-example benchmark (C / RC / LTRC) on the mnist5k CNN; prints one JSON object.

Per variant: robustness (match rate on the owner pruned 10-80 %, globally and layer-wise, and after FTAL
3 epochs), transferability (mean match rate on 5 independent models: 3 CNN + 2 MLP trained on the
attacker split), the Uniqueness Score per attack, seconds per fingerprint; then, for keys calibrated on
4 reference models (other seeds), the verdicts and the ROC AUC of the verdict score over positives
(FTAL, 30 % pruning, 8-bit quantization) vs negatives.

    python benchmarks/c_examples.py [--quick]
"""

from __future__ import annotations

import json
import sys
import time

import torch

import modelseal as ms
from modelseal.methods.characteristic import match_rate

QUICK = "--quick" in sys.argv
N = 50 if QUICK else 100
attack = ms.attacks.get


def main() -> dict:
    torch.set_num_threads(1)
    d = ms.data.load("mnist5k", seed=0)

    def train(arch: str, data, seed: int):
        m = ms.models.build(arch, d.meta, seed=seed)
        ms.train.fit(m, data, epochs=5, seed=seed, progress=False)
        return m

    owner = train("cnn", d.owner, 0)
    negatives = [train(a, d.attacker, 100 + s) for a, s in [("cnn", 1), ("cnn", 2), ("cnn", 3), ("mlp", 1),
                                                            ("mlp", 2)]]
    references = [train(a, d.attacker, s) for a, s in [("cnn", 201), ("mlp", 202), ("cnn", 203),
                                                       ("mlp", 204)]]
    levels = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    attacked = {f"prune{int(a * 100)}": attack("prune")(amount=a).apply(owner) for a in levels}
    attacked.update({f"prune{int(a * 100)}-layer": attack("prune")(amount=a, scope="layer").apply(owner)
                     for a in levels})
    ftal = attack("finetune")(mode="ftal", epochs=3).apply(owner, d.attacker)
    attacked["ftal3"] = ftal
    int8 = attack("quantize")(bits=8).apply(owner)

    out: dict = {"dataset": "mnist5k", "model": "cnn", "n": N, "negatives": len(negatives), "variants": {}}
    for variant in ("c", "rc", "ltrc"):
        t0 = time.perf_counter()
        key = ms.methods.get("c-examples")(variant=variant, n=N).extract(owner, d.meta)
        secs = time.perf_counter() - t0
        neg = [match_rate(m, key) for m in negatives]
        transfer = sum(neg) / len(neg)
        rob = {name: round(match_rate(m, key), 3) for name, m in attacked.items()}
        t1 = time.perf_counter()
        ckey = ms.methods.get("c-examples")(variant=variant, n=N).extract(owner, d.meta)
        csecs = time.perf_counter() - t1
        pos_v = {name: ms.verify(m, ckey, references=references)
                 for name, m in [("ftal3", ftal), ("prune30", attacked["prune30"]), ("int8", int8)]}
        neg_v = [ms.verify(m, ckey, references=references) for m in negatives]
        out["variants"][variant] = {
            "robustness": rob,
            "transferability": round(transfer, 3),
            "negative_rates": [round(r, 3) for r in neg],
            "uniqueness_score": {name: round(ms.stats.uniqueness_score(r, neg), 3) for name, r in rob.items()},
            "uniqueness_score_mean": round(ms.stats.uniqueness_score(list(rob.values()), neg), 3),
            "seconds_per_fingerprint": round(secs / N, 4),
            "calibrated": {
                "auc": ms.stats.roc_auc([v.score for v in pos_v.values()], [v.score for v in neg_v]),
                "owned": {k: v.owned for k, v in pos_v.items()},
                "p_values": {k: float(f"{v.p_value:.3g}") for k, v in pos_v.items()},
                "positive_scores": {k: round(v.score, 3) for k, v in pos_v.items()},
                "negative_scores": [round(v.score, 3) for v in neg_v],
                "negative_p_values": [float(f"{v.p_value:.3g}") for v in neg_v],
                "false_positives": sum(v.owned for v in neg_v),
                "null": {k: neg_v[0].details.get(k) for k in ("null_kind", "null_p0", "references", "reference_rates",
                                                       "null_rho", "starts")},
                "seconds_per_fingerprint": round(csecs / N, 4),
            },
        }
    return out


if __name__ == "__main__":
    print(json.dumps(main(), default=float))
