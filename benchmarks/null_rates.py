"""False-accusation rates of every judging method on independently trained models (issue 17).

One owner CNN is trained on the owner split of scikit-learn's 8x8 `digits` and protected, through the
registry (`ms.methods.protect`), with every method that judges: `trigger-set` (watermark), `c-examples`
and `tafa` (fingerprints) and `deepmarks` (per-user copies), each with `--keys` keys (seeds seed,
seed + 1, ...). Then `--models` independent models are trained on the **attacker** split (data the owner
never used): two architectures of the zoo (`cnn`, `mlp`), each at its default and at a smaller width,
each model with its own seed. Every independent model is judged with every key through the verifier's
path (`ms.verify` / `ms.trace`, with the key's public commitment checked) at the default alpha 1e-6 and
at looser alphas (default 1e-2 and 1e-1), so that rates are measurable at all. Per method and alpha the
JSON reports: models judged, verdicts (models x keys), verdicts accused (and per key), the false-
accusation rate with its one-sided Clopper-Pearson 95 % upper bound, the verdicts not judged (and why),
the smallest p-value seen, and every accusation (model, architecture, seed, key, p-value).

Why several keys: for one fixed key the verdicts on different independent models are not independent
trials -- independent models of one task answer a key's queries alike (e.g. many give the same labels to
the same abstract trigger images), so their accusations cluster. Every method's p-value is valid over the
randomness of the key (and of the model), so the rate is measured over keys x models; the Clopper-Pearson
bound still treats the verdicts as independent, which under this clustering makes it optimistic. Read
`accused_per_key` to see the clustering.

Positives as a sanity check, so the benchmark cannot pass by judging nothing: the trigger-set marked
model, the owner model for the two fingerprints, and each distributed DeepMarks copy (which must be
traced to its own user) are judged with the same rule.

Method-specific facts the numbers depend on:

- `c-examples` is judged against a null the verifier estimates from reference models (`references=`).
  They are `--references` further independent models (same architectures, seeds disjoint from the
  judged ones, also trained on the attacker split). R references cannot support a p-value below
  1/(R + 1), so c-examples cannot accuse at any alpha below that (`p_floor` in the JSON) -- at 1e-6 it
  never accuses, by construction; 1e-1 is the alpha where its rate becomes measurable.
- `deepmarks` reads the fingerprinted layer's weights (white-box). An independent model whose
  architecture lacks that layer (another architecture or width) raises KeyMismatchError: it is counted
  as "not judged" with that reason, never as a pass.
- `trigger-set` is sequential (looks of `batch` triggers, stopping early), so its p-value depends on
  alpha; every alpha is a separate verification.

Simulated sequential FPR: the trigger-set test is run `--sims` times under the null (each trigger
matches independently with probability 1/C, as for an independent model) through the library's own
verdict function `stats.sequential_test` with the key's budget (n triggers), the verifier's default
look size and C = 10, at alpha 1e-2 and 1e-3. Reported: accusations, rate, one-sided 95 % Clopper-
Pearson bounds, and the exact rate of the procedure (`SequentialBinomial.adjusted` at the largest
nominal tail that is accused; the min-p design makes it <= alpha, and the simulation checks it).

torch runs on one thread: with two threads on a shared two-core machine, training these tiny models
was 10-100x slower (thread oversubscription). The default run takes about 3.5 minutes on one core
(`--quick`: under 10 seconds).

    python benchmarks/null_rates.py [--models 200] [--keys 3] [--references 20] [--epochs 15]
                                    [--sims 100000] [--alphas 1e-6,1e-2,1e-1] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import torch
from scipy import stats as _st

import modelseal as ms
from modelseal import stats
from modelseal.errors import KeyMismatchError
from modelseal.verdict import DEFAULT_ALPHA

# name -> (zoo architecture, build kwargs). The cycle gives the owner's architecture (cnn) 2 of every 5
# models, so DeepMarks (white-box, needs the owner's layer) has many independent models to judge.
VARIANTS = {
    "cnn": ("cnn", {}),
    "cnn-small": ("cnn", {"channels": (8, 16), "hidden": 32}),
    "mlp": ("mlp", {}),
    "mlp-small": ("mlp", {"hidden": (64,)}),
}
CYCLE = ("cnn", "mlp", "cnn-small", "cnn", "mlp-small")
OWNER_VARIANT = "cnn"
INDEPENDENT_SEED0, REFERENCE_SEED0 = 10_000, 20_000
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[null_rates {time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def upper95(k: int, n: int) -> float | None:
    """One-sided 95 % Clopper-Pearson upper bound of a rate k / n (None when nothing was judged)."""
    return None if n == 0 else stats.clopper_pearson_upper(k, n, confidence=0.95)


def lower95(k: int, n: int) -> float:
    return 0.0 if k == 0 else float(_st.beta.ppf(0.05, k, n - k + 1))


def population(data: Any, count: int, seed0: int, epochs: int, what: str,
               init_seed: int | None = None) -> list[dict[str, Any]]:
    """`count` independent models on the attacker split, cycling through the variants, seeds seed0 + i.
    With `init_seed`, every model is the owner's variant initialised with the owner's seed (only the data and
    the training seed differ): the independents that share the owner's initialisation (issue 22)."""
    out = []
    for i in range(count):
        variant, seed = CYCLE[i % len(CYCLE)], seed0 + i
        if init_seed is not None:
            variant = OWNER_VARIANT
        arch, kw = VARIANTS[variant]
        m = ms.models.build(arch, data.meta, seed=seed if init_seed is None else init_seed, **kw)
        ms.train.fit(m, data.attacker, epochs=epochs, seed=seed, progress=False)
        out.append({"id": f"{what}-{i}", "variant": variant + ("" if init_seed is None else "-same-init"),
                    "seed": seed, "init_seed": seed if init_seed is None else init_seed, "model": m,
                    "test_accuracy": ms.train.evaluate(m, data.test)})
        if (i + 1) % 25 == 0 or i + 1 == count:
            log(f"trained {i + 1}/{count} {what} models")
    return out


def describe(models: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in models:
        by[m["variant"]].append(m)
    return {v: {"architecture": VARIANTS[v.removesuffix("-same-init")][0],
                "kwargs": {k: list(x) if isinstance(x, tuple) else x
                           for k, x in VARIANTS[v.removesuffix("-same-init")][1].items()},
                "init_seeds": sorted({m["init_seed"] for m in ms_}),
                "count": len(ms_), "seeds": [m["seed"] for m in ms_],
                "mean_test_accuracy": round(float(np.mean([m["test_accuracy"] for m in ms_])), 4),
                "min_test_accuracy": round(float(min(m["test_accuracy"] for m in ms_)), 4)}
            for v, ms_ in by.items()}


def judge(model: Any, done: Any, alpha: float, refs: list[Any]) -> Any:
    """One verdict through the verifier's path; the key's public commitment is opened first."""
    verifier: dict[str, Any] = {"alpha": alpha}
    if "references" in ms.methods.info(done.key.method).cls.verify_params:
        verifier["references"] = refs
    judge_verb = ms.trace if ms.methods.info(done.key.method).family == "per-user" else ms.verify
    return judge_verb(ms.Suspect(model), done.key, commitment=done.commitment, **verifier)


def exact_rate(seq: stats.SequentialBinomial, alpha: float) -> float:
    """The exact false-accusation rate of the sequential test at `alpha`: it accuses iff the smallest nominal
    tail over the looks is at most the largest attainable tail t* with adjusted(t*) <= alpha, an event of
    probability adjusted(t*) (stopping for futility only happens once accusing is out of reach)."""
    tails = np.unique(np.concatenate(seq.tails))
    accusable = [float(t) for t in tails if seq.adjusted(float(t)) <= alpha]
    return seq.adjusted(max(accusable)) if accusable else 0.0


def sequential_simulation(budget: int, p0: float, batch: int, sims: int, alphas: list[float],
                          seed: int, judged_alphas: list[float]) -> dict[str, Any]:
    """The trigger-set's sequential test under the null, through `stats.sequential_test` itself."""
    seq = stats.sequential_design(tuple(stats.sequential_schedule(budget, batch)), float(p0))
    out: dict[str, Any] = {"function": "modelseal.stats.sequential_test", "budget": budget, "p0": p0,
                           "batch": batch, "looks": len(seq.schedule), "sims": sims,
                           "exact_rate_at_judged_alphas": {f"{a:g}": exact_rate(seq, a) for a in judged_alphas},
                           "by_alpha": {}}
    for alpha in alphas:
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, int(round(-math.log10(alpha) * 1000))])
        hits = rng.random((sims, budget)) < p0
        accused, queried = 0, 0
        for h in hits:
            res = stats.sequential_test(lambda lo, hi, h=h: h[lo:hi], budget, p0, alpha, batch)
            accused += bool(res["owned"])
            queried += res["queried"]
        exact = exact_rate(seq, alpha)
        rate = accused / sims
        se = math.sqrt(alpha * (1 - alpha) / sims)
        out["by_alpha"][f"{alpha:g}"] = {
            "accused": accused, "rate": rate, "upper95": upper95(accused, sims), "lower95": lower95(accused, sims),
            "exact_rate": exact, "exact_rate_le_alpha": exact <= alpha,
            "rate_le_alpha": rate <= alpha, "rate_le_alpha_plus_3se": rate <= alpha + 3 * se,
            "upper95_le_alpha": upper95(accused, sims) <= alpha,
            "exact_within_95_interval": lower95(accused, sims) <= exact <= upper95(accused, sims),
            "mean_queries": round(queried / sims, 2), "seconds": round(time.perf_counter() - t0, 2)}
        log(f"simulated {sims} null runs at alpha {alpha:g}: {accused} accused (exact rate {exact:.3g})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="data split, owner, keys; independent seeds follow")
    ap.add_argument("--models", type=int, default=200, help="independent models judged (at least 50 by default)")
    ap.add_argument("--keys", type=int, default=3, help="keys per method (seeds seed, seed + 1, ...)")
    ap.add_argument("--references", type=int, default=20, help="further independent models: c-examples' null")
    ap.add_argument("--same-init", type=int, default=20,
                    help="further independents that share the owner's architecture and initialisation seed (the "
                         "first also its training seed, as `modelseal train --split attacker` with the owner's seed)")
    ap.add_argument("--epochs", type=int, default=15, help="training epochs of every model (owner included)")
    ap.add_argument("--sims", type=int, default=100_000, help="null runs of the sequential test per alpha")
    ap.add_argument("--alphas", default="1e-6,1e-2,1e-1", help="alphas to judge at (comma-separated)")
    ap.add_argument("--quick", action="store_true", help="tiny setting for tests: 4 models, small keys")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.quick:
        args.models, args.references, args.epochs, args.sims, args.keys, args.same_init = 4, 9, 6, 2000, 2, 2
    alphas = sorted({float(a) for a in args.alphas.split(",")})
    if min(args.models, args.references, args.sims, args.keys) < 1:
        ap.error("--models, --references, --sims and --keys must be positive")
    torch.set_num_threads(args.threads)

    data = ms.data.load("digits", seed=args.seed)
    owner = ms.models.build(OWNER_VARIANT, data.meta, seed=args.seed)
    ms.train.fit(owner, data.owner, epochs=args.epochs, seed=args.seed, progress=False)
    owner_acc = ms.train.evaluate(owner, data.test)
    log(f"owner {OWNER_VARIANT} trained on the owner split: test accuracy {owner_acc:.3f}")

    # every method that judges, through the registry; default parameters unless --quick; --keys keys each
    quick_params = {"trigger-set": {"n": 30}, "c-examples": {"n": 30, "steps": 30},
                    "tafa": {"n": 40, "steps": 8}, "deepmarks": {"users": 13}}
    judging = [n for n in ms.methods.names() if ms.methods.info(n).judges]
    key_seeds = [args.seed + k for k in range(args.keys)]
    protected: dict[str, list[Any]] = {}
    protect_s: dict[str, float] = {}
    for name in judging:
        t0 = time.perf_counter()
        protected[name] = []
        for ks in key_seeds:
            method = ms.methods.get(name)(seed=ks, **(quick_params.get(name, {}) if args.quick else {}))
            protected[name].append(ms.methods.protect(method, copy.deepcopy(owner), data.owner, data.meta,
                                                      progress=False))
        protect_s[name] = round(time.perf_counter() - t0, 2)
        log(f"protected with {name}: {args.keys} key(s) in {protect_s[name]} s")

    t0 = time.perf_counter()
    independent = population(data, args.models, args.seed + INDEPENDENT_SEED0, args.epochs, "independent")
    # the owner's own init seed; the first one also trains with the owner's seed (only the data differ)
    independent += population(data, args.same_init, args.seed, args.epochs, "same-init", init_seed=args.seed)
    references = population(data, args.references, args.seed + REFERENCE_SEED0, args.epochs, "reference")
    train_s = round(time.perf_counter() - t0, 2)
    refs = [r["model"] for r in references]

    methods_out: dict[str, Any] = {}
    total_false_default = 0
    for name in judging:
        t0 = time.perf_counter()
        cls = ms.methods.info(name).cls
        per_user = cls.family == "per-user"
        # positives: the protected model(s) of every key; a per-user copy j must be traced to user j alone
        positives: dict[str, Any] = {"protected_test_accuracy": [
            round(ms.train.evaluate(done.models[0], data.test), 4) for done in protected[name]]}
        for alpha in alphas:
            if per_user:
                vs = [(j, judge(m, done, alpha, refs)) for done in protected[name] for j, m in enumerate(done.models)]
                correct = sum(v.accused == [j] for j, v in vs)
                positives[f"{alpha:g}"] = {"copies": len(vs), "traced_to_own_user": correct,
                                           "detected": correct == len(vs),
                                           "max_p_value": max(v.p_value for _, v in vs)}
            else:
                vs = [judge(done.models[0], done, alpha, refs) for done in protected[name]]
                positives[f"{alpha:g}"] = {"keys": len(vs), "detected_by_keys": sum(v.owned for v in vs),
                                           "detected": all(v.owned for v in vs),
                                           "p_values": [v.p_value for v in vs],
                                           "queries": [v.queries for v in vs]}
        by_alpha: dict[str, Any] = {}
        not_judged_reasons: Counter[str] = Counter()
        judged_ids: set[str] = set()
        for alpha in alphas:
            judged, verdicts, accused, per_key, nj, pmin, floor = set(), 0, [], [0] * len(key_seeds), 0, 1.0, None
            same_init_found: list[dict[str, Any]] = []
            for ki, done in enumerate(protected[name]):
                for m in independent:
                    try:
                        v = judge(m["model"], done, alpha, refs)
                    except KeyMismatchError as e:  # white-box method, layer absent from this architecture
                        nj += 1
                        if alpha == alphas[0] and ki == 0:
                            not_judged_reasons[f"{m['variant']}: {e}"] += 1
                        continue
                    if not v.judged:
                        nj += 1
                        if alpha == alphas[0] and ki == 0:
                            not_judged_reasons[f"{m['variant']}: {v.details.get('not_judged')}"] += 1
                        continue
                    judged.add(m["id"])
                    verdicts += 1
                    pmin = min(pmin, v.p_value)
                    floor = v.details.get("p_floor", floor)
                    if v.owned and cls.shared_init_is_derived and m["variant"].endswith("-same-init"):
                        # under this method's null (independent initialisation) a model trained from the owner's
                        # initial weights is derived: found, not falsely accused
                        same_init_found.append({"model": m["id"], "key_seed": key_seeds[ki], "p_value": v.p_value})
                    elif v.owned:
                        per_key[ki] += 1
                        accused.append({"model": m["id"], "variant": m["variant"], "seed": m["seed"],
                                        "key_seed": key_seeds[ki], "p_value": v.p_value,
                                        "score": round(v.score, 4), "queries": v.queries,
                                        **({"accused_users": v.accused} if per_user else {})})
            judged_ids |= judged
            k = len(accused)
            by_alpha[f"{alpha:g}"] = {
                "models_judged": len(judged), "verdicts": verdicts, "accused": k,
                "rate": (k / verdicts) if verdicts else None, "upper95": upper95(k, verdicts),
                "accused_per_key": per_key, "models_accused": len({a["model"] for a in accused}),
                "not_judged": nj, "min_p_value": pmin if verdicts else None, "accused_models": accused,
                **({"same_init_found_as_derived": same_init_found} if cls.shared_init_is_derived else {}),
                **({"p_floor": floor, "alpha_reachable": floor <= alpha} if floor is not None else {})}
            if alpha == DEFAULT_ALPHA:
                total_false_default += k
        judged_models = [m for m in independent if m["id"] in judged_ids]
        judged_variants = sorted({m["variant"] for m in judged_models})
        first = protected[name][0].key
        methods_out[name] = {
            "family": cls.family, "access": cls.access, "keys": len(key_seeds), "key_seeds": key_seeds,
            "key_params": {k: v for k, v in first.params.items()
                           if isinstance(v, (int, float, str, bool)) and k not in ("seed", "architecture")},
            "verifier": {k: s.default for k, s in cls.verify_params.items() if k not in ("alpha", "max_queries")}
            | ({"references": len(refs)} if "references" in cls.verify_params else {}),
            "protect_seconds": protect_s[name],
            "owner_detected": positives,
            "by_alpha": by_alpha,
            "not_judged_reasons": dict(not_judged_reasons),
            "judged_architectures": sorted({VARIANTS[v.removesuffix("-same-init")][0] for v in judged_variants}),
            "judged_per_variant": dict(Counter(m["variant"] for m in judged_models)),
            "judged_seeds": "every seed of the judged variants (listed under independent_models)"
            if all(m["id"] in judged_ids for m in independent if m["variant"] in judged_variants)
            else [m["seed"] for m in judged_models],
            "judge_seconds": round(time.perf_counter() - t0, 2),
        }
        summary = ", ".join(f"alpha {a}: {b['accused']}/{b['verdicts']}" for a, b in by_alpha.items())
        log(f"judged with {name} ({args.keys} keys x {len(judged_ids)} models): {summary}")

    tsp = protected["trigger-set"][0].key
    seq_sim = sequential_simulation(budget=len(tsp.tensors["labels"]), p0=1.0 / int(tsp.signature["output_size"]),
                                    batch=ms.methods.get("trigger-set").verify_params["batch"].default,
                                    sims=args.sims, alphas=[1e-2, 1e-3], seed=args.seed, judged_alphas=alphas)

    doc = {
        "benchmark": "null_rates", "issue": 17,
        "question": "how often is a model trained independently of the owner accused of being the owner's?",
        "data": {"name": "digits", "owner": len(data.owner), "attacker": len(data.attacker), "test": len(data.test),
                 "classes": data.meta.num_classes},
        "settings": {"seed": args.seed, "models": args.models, "keys": args.keys, "references": args.references,
                     "same_init": args.same_init, "epochs": args.epochs,
                     "alphas": alphas, "default_alpha": DEFAULT_ALPHA, "sims": args.sims, "quick": args.quick,
                     "threads": args.threads, "device": "cpu", "torch": torch.__version__,
                     "python": platform.python_version(), "modelseal": ms.__version__},
        "owner": {"variant": OWNER_VARIANT, "seed": args.seed, "trained_on": "owner split",
                  "test_accuracy": round(owner_acc, 4)},
        "independent_models": {"count": len(independent), "trained_on": "attacker split",
                               "architectures": sorted({VARIANTS[m["variant"].removesuffix("-same-init")][0]
                                                        for m in independent}),
                               "same_init": sum(m["variant"].endswith("-same-init") for m in independent),
                               "variants": describe(independent)},
        "reference_models": {"count": len(references), "trained_on": "attacker split", "used_by": "c-examples",
                             "disjoint_from_judged": not ({r["seed"] for r in references}
                                                          & {m["seed"] for m in independent}),
                             "variants": describe(references)},
        "methods": methods_out,
        "false_accusations_at_default_alpha": total_false_default,
        "notes": [
            "rate = accused verdicts / verdicts (independent models x keys); upper95 is the one-sided "
            "Clopper-Pearson bound treating verdicts as independent trials, which they are not for one key "
            "(independent models answer a key's queries alike; see accused_per_key), so it is optimistic",
            "c-examples cannot accuse below p_floor = 1/(references + 1); at alphas below it rate 0 is by "
            "construction (alpha_reachable false)",
            "deepmarks judges only models that have the owner's fingerprinted layer; the others are counted "
            "in not_judged with the reason",
            "trigger-set's p-value depends on alpha (sequential test, stops early); exact_rate_at_judged_alphas "
            "in sequential_simulation is its exact false-accusation rate at each alpha judged",
        ],
        "sequential_simulation": seq_sim,
        "seconds": {"train_independent_and_references": train_s,
                    "total": round(time.perf_counter() - T0, 1)},
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
