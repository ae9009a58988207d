"""AdvParams on mnist5k's CNN: how few weights lock the model, and what an attacker without the key gets back.

Prints JSON: parameters changed (count and % of all), owner / locked / unlocked test accuracy, lock
seconds, and for each key-free recovery attack (fine-tuning all layers with 1 %, 5 %, 10 % of the
attacker split; resetting per-layer outliers; magnitude pruning) the recovered test accuracy next to the
accuracy of the same architecture trained from scratch on the same data for the same epochs. The paper's
figures are included for reference.

    python benchmarks/advparams.py [--epochs 5] [--attack-epochs 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import modelseal as ms
from modelseal import attacks

PAPER = {
    "source": "Xue et al., AdvParams, IEEE TETC 2022 (arXiv 2105.13697)",
    "accuracy_drop_percent": {"Fashion-MNIST": 80.65, "CIFAR-10": 81.16, "GTSRB": 87.91},
    "fraction_of_params_changed_percent": 0.000205,
    "claims": "robust to fine-tuning, pruning and an adaptive attacker",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5, help="owner training epochs")
    ap.add_argument("--attack-epochs", type=int, default=10, help="epochs of fine-tuning and of from-scratch")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = ms.data.load("mnist5k", seed=args.seed)
    owner = ms.models.build("cnn", data.meta, seed=args.seed)
    ms.train.fit(owner, data.owner, epochs=args.epochs, seed=args.seed, progress=False)
    acc = lambda m: round(ms.train.evaluate(m, data.test), 4)  # noqa: E731

    t0 = time.perf_counter()
    locked, key = ms.methods.get("advparams")(seed=args.seed).lock(owner, data.owner)
    lock_s = time.perf_counter() - t0
    unlocked = ms.unlock(locked, key)
    exact = all(torch.equal(a, b) for a, b in zip(unlocked.state_dict().values(),
                                                   owner.state_dict().values(), strict=True))
    total = sum(p.numel() for p in owner.parameters())
    changed = key.params["changed"]

    recovery = []
    for frac in (0.01, 0.05, 0.10):
        ft = attacks.get("finetune")(mode="ftal", fraction=frac, epochs=args.attack_epochs, seed=args.seed)
        rec = ft.apply(locked, data.attacker)
        scratch = ms.models.build("cnn", data.meta, seed=args.seed + 1)
        part = data.attacker.subset(frac, args.seed)
        ms.train.fit(scratch, part, epochs=args.attack_epochs, seed=args.seed, progress=False)
        recovery.append({"attack": f"finetune ftal {int(frac * 100)} %", "samples": len(part),
                         "recovered_accuracy": acc(rec), "scratch_accuracy": acc(scratch)})
    for z in (3.0, 2.0):
        rec = attacks.get("reset-outliers")(z=z).apply(locked)
        recovery.append({"attack": f"reset-outliers z={z}", "recovered_accuracy": acc(rec),
                         "scratch_accuracy": None})
    for amount in (0.1, 0.3, 0.5):
        rec = attacks.get("prune")(amount=amount).apply(locked)
        recovery.append({"attack": f"prune {int(amount * 100)} %", "recovered_accuracy": acc(rec),
                         "scratch_accuracy": None})

    owner_acc, locked_acc = acc(owner), acc(locked)
    print(json.dumps({
        "data": "mnist5k", "model": "cnn", "device": "cpu",
        "lock_params": {k: key.params[k]
                        for k in ("max_params", "eps", "target_accuracy", "batch_size", "seed")},
        "params_changed": changed, "params_total": total,
        "params_changed_percent": round(100 * changed / total, 5),
        "layers_changed": key.params["tensors"],
        "owner_accuracy": owner_acc, "locked_accuracy": locked_acc, "unlocked_accuracy": acc(unlocked),
        "accuracy_drop_percent": round(100 * (owner_acc - locked_acc), 2),
        "unlock_bit_exact": exact, "lock_seconds": round(lock_s, 2),
        "key_free_recovery": recovery,
        "paper": PAPER,
    }, indent=2))


if __name__ == "__main__":
    main()
