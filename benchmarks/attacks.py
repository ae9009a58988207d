"""Every protection x every registered attack on the digits owner (mnist5k with --mnist5k): the attacked
model's accuracy, its cost, and the verdict at alpha 1e-6 and 0.01. Prints JSON (and writes it with --out).

    python benchmarks/attacks.py --quick            # digits MLP owner, light protections (minutes on 1 core)
    python benchmarks/attacks.py --mnist5k --arch cnn

The attacks run at their registered defaults (never weakened for the table); `--quick` only lightens the
protections' own search/training parameters and caps extraction students' epochs at their defaults.
A protection is *removed* by an attack when it is detected unattacked, the attacked model is not detected
and keeps its accuracy within 5 points of the owner's (the bench's rule). Locks (advparams) are judged by
accuracy: the lock holds while the attacked model stays more than 5 points below the owner.
Collusion attacks run only on per-user copies; query-side attacks skip white-box methods.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import modelseal as ms
from modelseal import attacks, methods
from modelseal.bench.scenario import protect_params, verifier_params
from modelseal.bench.store import REMOVAL_MARGIN
from modelseal.suspect import Suspect

ALPHAS = (1e-6, 0.01)


def protections(quick: bool) -> dict[str, dict]:
    if quick:
        return {"trigger-set": {"n": 50, "extra_epochs": 1},
                "c-examples": {"variant": "rc", "n": 50, "steps": 30},
                "tafa": {"n": 100, "steps": 10, "permutations": 300},
                "deepmarks": {"users": 7, "epochs": 1},
                "advparams": {}}
    return {"trigger-set": {"n": 100}, "c-examples": {"variant": "rc", "n": 100}, "tafa": {},
            "deepmarks": {"users": 7}, "advparams": {}}


def attack_params(name: str, peers: list) -> dict:
    if name == "average":
        return {"others": peers[:1]}
    if name == "collude":
        return {"k": 2}
    if name == "chain":
        return {"steps": [{"attack": "structured-prune", "params": {"amount": 0.5}},
                          {"attack": "knockoff", "params": {}}]}
    return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist5k", action="store_true", help="use mnist5k instead of digits")
    ap.add_argument("--arch", default="mlp")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated attacks")
    ap.add_argument("--methods", default=None, help="comma-separated protections")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data_name = "mnist5k" if args.mnist5k else "digits"
    data = ms.data.load(data_name, seed=0)
    owner = ms.models.build(args.arch, data.meta, seed=0)
    ms.train.fit(owner, data.owner, epochs=10, seed=0, progress=False)
    owner_acc = ms.train.evaluate(owner, data.test)
    refs = []
    for s in (2000, 2001):  # the verifier's independent reference models (c-examples)
        r = ms.models.build(args.arch, data.meta, seed=s)
        ms.train.fit(r, data.attacker, epochs=10, seed=s, progress=False)
        refs.append(r)
    names = args.only.split(",") if args.only else attacks.names()
    prots = protections(args.quick)
    if args.methods:
        prots = {k: v for k, v in prots.items() if k in args.methods.split(",")}
    results = []
    t_all = time.perf_counter()
    for method, params in prots.items():
        mi = methods.info(method)
        rule = verifier_params(mi.cls, params)  # the verifier's parameters (e.g. tafa's permutations)
        done = methods.protect(mi.cls(seed=0, **protect_params(mi.cls, params)), owner, data.owner, data.meta,
                               progress=False)
        key, copies = done.key, done.models
        protected_acc = ms.train.evaluate(copies[0], data.test)

        def judge(suspect: Suspect, alpha: float, mi=mi, key=key, rule=rule) -> dict:
            kw = {**rule, "alpha": alpha}
            if "references" in mi.cls.verify_params:
                kw["references"] = refs
            v = methods.judge(suspect, key, **kw)
            return {"owned": bool(v.owned), "p_value": float(v.p_value),
                    **({"accused": sorted(int(u) for u in v.accused)} if v.accused is not None else {})}

        base = {a: judge(Suspect(copies[0]), a) for a in ALPHAS} if mi.judges else None
        results.append({"protection": method, "attack": "none", "family": None, "owner_acc": owner_acc,
                        "protected_acc": protected_acc, "attacked_acc": protected_acc,
                        **({f"alpha={a:g}": base[a] for a in ALPHAS} if base else {})})
        for name in names:
            cls = attacks.get(name)
            if name == "overwrite" and method != "trigger-set":
                continue
            atk = cls(**attack_params(name, copies[1:] or refs), seed=0)
            if atk.copies > 1 and len(copies) < atk.copies:
                continue
            if atk.acts_on == "queries" and mi.access == "white-box":
                continue
            row = {"protection": method, "attack": name, "family": atk.family, "owner_acc": owner_acc,
                   "protected_acc": protected_acc}
            try:
                done = atk.run_many(copies[:atk.copies], data.attacker) if atk.copies > 1 else \
                    atk.run(copies[0], data.attacker)
                attacked = done.model
                cost = {k: v for k, v in done.cost.items() if k != "steps"}
                if atk.acts_on == "queries":
                    wrapped = atk.wrap(Suspect(attacked), data.meta)
                    acc = float((wrapped.labels(data.test.x) == data.test.y).float().mean())
                    if atk.query_stats.get("answered"):
                        cost["test_rejection_rate"] = atk.query_stats["rejected"] / atk.query_stats["answered"]
                else:
                    acc = ms.train.evaluate(attacked, data.test)
                row.update(attacked_acc=acc, cost=cost)
                if mi.judges:
                    for a in ALPHAS:
                        suspect = atk.wrap(Suspect(attacked), data.meta) if atk.acts_on == "queries" \
                            else Suspect(attacked)
                        v = judge(suspect, a)
                        row[f"alpha={a:g}"] = v
                        row[f"removed@{a:g}"] = bool(base[a]["owned"] and not v["owned"]
                                                     and acc >= owner_acc - REMOVAL_MARGIN)
                else:
                    holds = acc < owner_acc - REMOVAL_MARGIN
                    row["lock_holds"] = holds
                    for a in ALPHAS:
                        row[f"removed@{a:g}"] = not holds
            except ms.errors.ModelSealError as e:
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            results.append(row)
            print(json.dumps({k: row.get(k) for k in ("protection", "attack", "attacked_acc", "removed@1e-06",
                                                       "removed@0.01", "error")}), file=sys.stderr, flush=True)
    summary: dict[str, dict] = {}
    for r in results:
        if r["attack"] == "none":
            continue
        s = summary.setdefault(r["protection"], {"removed_by@1e-06": [], "removed_by@0.01": [], "survived@1e-06": []})
        if r.get("removed@1e-06"):
            s["removed_by@1e-06"].append(r["attack"])
        elif "error" not in r:
            s["survived@1e-06"].append(r["attack"])
        if r.get("removed@0.01"):
            s["removed_by@0.01"].append(r["attack"])
    out = {"data": data_name, "arch": args.arch, "quick": args.quick, "owner_acc": owner_acc,
           "wall_s": time.perf_counter() - t_all, "summary": summary, "rows": results}
    text = json.dumps(out, indent=1, default=str)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
