"""TAFA benchmark: one JSON line per task (classification CNN, regression MLP, VAE decoder).

Positives: the owner, FTAL (3 epochs; for the CNN at lr 3e-4 and, reported apart, at lr 1e-3),
50 % global magnitude pruning, 8-bit quantization. Negatives: independently trained models of the
same architecture. Prints AUC of the score, the smallest p on a negative, the largest p on a positive,
extraction seconds and verification queries.

    python benchmarks/tafa.py [--quick]
"""

from __future__ import annotations

import copy
import json
import sys
import time

import torch

import modelseal as ms
from modelseal.models.vae import VAE
from modelseal.train import train_vae

QUICK = "--quick" in sys.argv
attack = ms.attacks.get


def judge(task: str, owner, spec, positives: dict, negatives: list, extra: dict | None = None) -> dict:
    t0 = time.perf_counter()
    key = ms.methods.get("tafa")().extract(owner, spec)
    seconds = time.perf_counter() - t0
    pos = {k: ms.verify(ms.Suspect(m), key) for k, m in positives.items()}
    neg = [ms.verify(ms.Suspect(m), key) for m in negatives]
    out = {
        "task": task,
        "auc": ms.stats.roc_auc([v.score for v in pos.values()], [v.score for v in neg]),
        "min_p_negative": min(v.p_value for v in neg),
        "max_p_positive": max(v.p_value for v in pos.values()),
        "owned": {k: v.owned for k, v in pos.items()},
        "false_positives": sum(v.owned for v in neg),
        "negatives": len(neg),
        "scores": {k: round(v.score, 4) for k, v in pos.items()},
        "negative_scores": [round(v.score, 4) for v in neg],
        "extract_seconds": round(seconds, 2),
        "queries": pos["self"].queries,
    }
    for name, model in (extra or {}).items():
        v = ms.verify(ms.Suspect(model), key)
        out[f"{name}_apart"] = {"owned": v.owned, "score": round(v.score, 4), "p_value": v.p_value}
    return out


def attacked(owner, data, ft_lr: float = 1e-3) -> dict:
    return {"self": owner,
            "ftal": attack("finetune")(mode="ftal", epochs=3, lr=ft_lr).apply(owner, data),
            "prune50": attack("prune")(amount=0.5).apply(owner),
            "int8": attack("quantize")(bits=8).apply(owner)}


def classification() -> dict:
    d = ms.data.load("mnist5k", seed=0)

    def train(data, seed, epochs=5):
        m = ms.models.build("cnn", d.meta, seed=seed)
        ms.train.fit(m, data, epochs=epochs, seed=seed, progress=False)
        return m

    owner = train(d.owner, 0)
    k = 3 if QUICK else 6
    negatives = [train(d.attacker if s % 2 else d.owner, 100 + s) for s in range(k)]
    ft_fast = attack("finetune")(mode="ftal", epochs=3, lr=1e-3).apply(owner, d.attacker)
    return judge("classification/mnist5k-cnn", owner, d.meta, attacked(owner, d.attacker, ft_lr=3e-4),
                 negatives, extra={"ftal_lr1e-3": ft_fast})


def regression() -> dict:
    d = ms.data.load("diabetes", seed=0)

    def train(data, seed):
        m = ms.models.build("mlp", d.meta, seed=seed, hidden=(64, 64))
        ms.train.fit(m, data, epochs=50, seed=seed, progress=False)
        return m

    owner = train(d.owner, 0)
    negatives = [train(d.attacker if s % 2 else d.owner, 100 + s) for s in range(10)]
    return judge("regression/diabetes-mlp", owner, d.meta, attacked(owner, d.attacker), negatives)


def generative() -> dict:
    d = ms.data.load("digits", seed=0)

    def train(data, seed, epochs=30):
        vae = VAE((1, 8, 8), latent=8, seed=seed)
        train_vae(vae, data, epochs=epochs, seed=seed)
        return vae

    owner = train(d.owner, 0)
    tuned = copy.deepcopy(owner)
    train_vae(tuned, d.attacker, epochs=3, seed=7)  # FTAL on the whole VAE, the attacker's images
    negatives = [train(d.attacker if s % 2 else d.owner, 100 + s).decoder for s in range(10)]
    dec = owner.decoder
    positives = {"self": dec, "ftal": tuned.decoder, "prune50": attack("prune")(amount=0.5).apply(dec),
                 "int8": attack("quantize")(bits=8).apply(dec)}
    return judge("generative/digits-vae-decoder", dec, ms.data.InputSpec((8,), (-3.0, 3.0)), positives,
                 negatives)


if __name__ == "__main__":
    torch.set_num_threads(2)
    for run in (regression, generative, classification):
        print(json.dumps(run()), flush=True)
