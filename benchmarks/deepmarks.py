"""DeepMarks benchmark: prints one JSON object.

Suite `power` (default; scikit-learn `digits`, the README's owners): for every code size the CLI offers
(`--users`, default the six projective planes 7, 13, 31, 57, 133, 183 users) on an MLP owner (the
README's) and a CNN owner, each trained 10 epochs on the owner split:
- every intact copy's p-value and whether it is traced to exactly its user at alpha 1e-6, and each copy's
  test accuracy against the owner's (worst delta);
- a structurally pruned copy (50 % of the carrier layer's output neurons removed by slicing: those with
  the smallest L1 norm, and the next layer's matching inputs), and a neuron-permuted copy (function
  unchanged): the carrier's output neurons (MLP: the fingerprinted `net.1`; this leaves w-bar unchanged)
  and the carrier's input units (CNN: the channels of `features.3` and the matching column blocks of
  `classifier.1`), each traced;
- the summary `table`: users -> traced/total at 1e-6, worst (largest) p-value, worst copy's accuracy change
  vs the owner in points (negative = a drop), distribution wall time; and `largest_users` per owner (the
  largest code `distribute` accepts on that model, computed before training);
- independent models (trained on the attacker split: MLPs of two widths and CNNs, 3 seeds each) judged
  with every key: p-values and accusations at 1e-6, 1e-2 and 1e-1; a model without the carrier layer's
  shape counts as "not applicable" (KeyMismatchError), never as a pass.

Suite `collusion` (mnist5k CNN, 31 users): K = 1..6 colluders averaging their copies (6 is past the
design's bound of k - 1 = 5): colluders found and innocents accused, with no further attack, after 50 %
global magnitude pruning, and after 2 epochs of fine-tuning on the attacker split.

    python benchmarks/deepmarks.py [--suite power|collusion] [--users 7 13 31] [--label after] [--quick]

`--quick` (what the test runs): the power suite on the MLP owner with 7 users, and one independent model of
each kind (3 in all).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
from torch import nn

import modelseal as ms

CLI_SIZES = (7, 13, 31, 57, 133, 183)


def average(models):
    out = copy.deepcopy(models[0])
    sds = [m.state_dict() for m in models]
    out.load_state_dict({k: torch.stack([sd[k].float() for sd in sds]).mean(0).to(sds[0][k].dtype)
                         for k in sds[0]})
    return out


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, last = name.split(".")
    mod = model
    for p in path:
        mod = getattr(mod, p)
    return mod, last


def _next_linear(model: nn.Module, name: str) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[names.index(name) + 1]


def prune_outputs(model: nn.Module, layer: str, keep: float = 0.5) -> nn.Module:
    """Structured pruning by slicing: keep the `keep` fraction of the Linear `layer`'s output neurons with the
    largest L1 norm and drop the next Linear layer's matching inputs (function of the kept part unchanged)."""
    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    lin, nxt_name = mods[layer], _next_linear(out, layer)
    nxt = mods[nxt_name]
    n_keep = max(1, int(round(lin.out_features * keep)))
    idx = torch.argsort(lin.weight.detach().abs().sum(1), descending=True)[:n_keep].sort().values
    a = nn.Linear(lin.in_features, n_keep)
    b = nn.Linear(n_keep, nxt.out_features)
    with torch.no_grad():
        a.weight.copy_(lin.weight[idx])
        a.bias.copy_(lin.bias[idx])
        b.weight.copy_(nxt.weight[:, idx])
        b.bias.copy_(nxt.bias)
    for name, new in ((layer, a), (nxt_name, b)):
        parent, last = _parent(out, name)
        setattr(parent, last, new)
    return out


def permute_outputs(model: nn.Module, layer: str, seed: int = 0) -> nn.Module:
    """Permute the Linear `layer`'s output neurons (rows, bias) and the next Linear's columns."""
    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    lin, nxt = mods[layer], mods[_next_linear(out, layer)]
    perm = torch.randperm(lin.out_features, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        lin.weight.copy_(lin.weight[perm])
        lin.bias.copy_(lin.bias[perm])
        nxt.weight.copy_(nxt.weight[:, perm])
    return out


def permute_conv_channels(model: nn.Module, conv: str, linear: str, seed: int = 0) -> nn.Module:
    """Permute the output channels of `conv` and the matching column blocks of the Linear `linear` that reads
    its flattened feature map (the CNN's carrier): the function is unchanged, w-bar's entries are moved."""
    out = copy.deepcopy(model)
    mods = dict(out.named_modules())
    c, lin = mods[conv], mods[linear]
    ch = c.out_channels
    perm = torch.randperm(ch, generator=torch.Generator().manual_seed(seed))
    per = lin.in_features // ch
    cols = (perm[:, None] * per + torch.arange(per)[None, :]).reshape(-1)
    with torch.no_grad():
        c.weight.copy_(c.weight[perm])
        c.bias.copy_(c.bias[perm])
        lin.weight.copy_(lin.weight[:, cols])
    return out


def _trace(model, key) -> dict:
    try:
        r = ms.trace(model, key)
    except ms.ModelSealError as e:
        return {"refused": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    return {"accused": r.accused, "p_value": r.p_value, "best_user": r.details.get("best_user")}


def power_suite(args) -> dict:
    data = ms.data.load("digits", seed=0)
    owners = {}
    for arch in args.arch:
        m = ms.models.build(arch, data.meta, seed=0)
        ms.train.fit(m, data.owner, epochs=10, seed=0, progress=False)
        owners[arch] = m
    independents = []
    for arch, kw in (("mlp", {}), ("mlp", {"hidden": (128, 64)}), ("cnn", {})):
        for s in range(1 if args.quick else 3):
            m = ms.models.build(arch, data.meta, seed=700 + s, **kw)
            ms.train.fit(m, data.attacker, epochs=10, seed=700 + s, progress=False)
            independents.append((f"{arch}{'-narrow' if kw else ''}-seed{700 + s}", m))
    out: dict = {}
    table: dict = {}
    for arch, owner in owners.items():
        owner_acc = ms.train.evaluate(owner, data.test)
        rows: dict = {"largest_users": ms.methods.get("deepmarks")(seed=args.seed).largest_users(owner)}
        for users in args.users:
            t0 = time.perf_counter()
            try:
                copies, key = ms.methods.get("deepmarks")(users=users, seed=args.seed).distribute(
                    owner, data.owner, progress=False)
            except ms.ModelSealError as e:
                rows[str(users)] = {"refused": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
                continue
            secs = time.perf_counter() - t0
            layer = key.params["layer"]
            accs = [ms.train.evaluate(c, data.test) for c in copies]
            traces = [ms.trace(c, key) for c in copies]
            ps = [t.p_value for t in traces]
            traced = [t.accused == [j] for j, t in enumerate(traces)]
            row = {"layer": layer, "rows": key.params.get("rows"), "seconds": round(secs, 1),
                   "owner_accuracy": owner_acc, "copy_accuracy_min": min(accs),
                   "copy_accuracy_max": max(accs), "worst_delta_points": round(100 * (min(accs) - owner_acc), 2),
                   "traced_at_1e-6": int(sum(traced)), "copies": len(copies),
                   "p_max": max(ps), "p_min": min(ps)}
            if users <= 31:
                row["p_values"] = ps
            probe = list(range(min(3, len(copies))))
            mods = dict(owner.named_modules())
            if isinstance(mods.get(layer), nn.Linear):
                row["pruned_50pct_outputs"] = [
                    {"user": j, **_trace(prune_outputs(copies[j], layer), key),
                     "accuracy": ms.train.evaluate(prune_outputs(copies[j], layer), data.test)} for j in probe]
                row["permuted_carrier_outputs"] = [{"user": j, **_trace(permute_outputs(copies[j], layer, j), key)}
                                                   for j in probe]
            if arch == "cnn" and layer == "classifier.1":
                row["permuted_carrier_inputs"] = [
                    {"user": j, **_trace(permute_conv_channels(copies[j], "features.3", layer, j), key)}
                    for j in probe]
            ind = []
            for name, m in independents:
                ind.append({"model": name, **_trace(m, key)})
            judged = [r for r in ind if "refused" not in r]
            row["independent"] = {
                "judged": len(judged), "not_applicable": len(ind) - len(judged),
                "accused_at": {f"{a:g}": sum(r["p_value"] <= a for r in judged) for a in (1e-6, 1e-2, 1e-1)},
                "p_min": min((r["p_value"] for r in judged), default=None), "models": ind}
            rows[str(users)] = row
            print(json.dumps({arch: {str(users): {k: v for k, v in row.items() if k != "p_values"}}}),
                  file=__import__("sys").stderr, flush=True)
        out[arch] = rows
        table[arch] = [
            {"users": int(u), **({"refused": r["refused"]} if "refused" in r else {
                "traced": f"{r['traced_at_1e-6']}/{r['copies']}", "worst_p": r["p_max"],
                "worst_delta_points": r["worst_delta_points"], "seconds": r["seconds"]})}
            for u, r in rows.items() if u != "largest_users"]
    return {"method": "deepmarks", "suite": "power", "dataset": "digits", "label": args.label,
            "seed": args.seed, "quick": args.quick, "table": table, "owners": out}


def collusion_suite(args) -> dict:
    dev = ms.runtime.resolve_device(args.device)
    data = ms.data.load("mnist5k", seed=0)
    owner = ms.models.build("cnn", data.meta, seed=args.seed).to(dev)
    ms.train.fit(owner, data.owner, epochs=5, seed=args.seed, progress=False)
    owner_acc = ms.train.evaluate(owner, data.test)

    plain = copy.deepcopy(owner)
    t0 = time.perf_counter()
    ms.train.fit(plain, data.owner, epochs=1, seed=args.seed + 1, progress=False)
    plain_epoch = time.perf_counter() - t0

    users = args.users[0] if len(args.users) == 1 else 31
    method = ms.methods.get("deepmarks")(users=users, seed=args.seed)
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

    return {
        "method": "deepmarks", "suite": "collusion", "label": args.label, "dataset": "mnist5k", "model": "cnn",
        "device": str(dev), "users": len(copies), "v": key.params["v"], "k": k, "max_colluders": k - 1,
        "layer": key.params["layer"], "gamma": key.params["gamma"], "rows": key.params.get("rows"),
        "epochs_per_copy": key.params["epochs"],
        "owner_accuracy": owner_acc, "copy_accuracy": accs,
        "copy_accuracy_min_delta": min(accs) - owner_acc,
        "distribution_time_per_copy_over_plain_epoch": per_copy / plain_epoch,
        "single_copies_traced_exactly": sum(single),
        "collusion_by_averaging": collusion, "independent_models": independent,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", choices=("power", "collusion"), default="power")
    ap.add_argument("--users", type=int, nargs="+", default=list(CLI_SIZES))
    ap.add_argument("--arch", nargs="+", choices=("mlp", "cnn"), default=["mlp", "cnn"],
                    help="owner architectures of the power suite")
    ap.add_argument("--coalitions", type=int, default=20)
    ap.add_argument("--finetune-coalitions", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label", default="")
    ap.add_argument("--quick", action="store_true", help="power suite, MLP owner, 7 users, 3 independents")
    args = ap.parse_args()
    if args.quick:
        args.suite, args.users, args.arch = "power", [7], ["mlp"]
    torch.set_num_threads(1)
    doc = power_suite(args) if args.suite == "power" else collusion_suite(args)
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
