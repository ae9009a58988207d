"""TAFA benchmark: one JSON line per task (classification CNN, regression MLP, VAE decoder), then one per
digits owner (MLP, CNN) with p-values behind each API output transform and per structured-pruning level.

Positives: the owner, FTAL (3 epochs; for the CNN at lr 3e-4 and, reported apart, at lr 1e-3),
50 % global magnitude pruning, 8-bit quantization. Negatives: independently trained models of the
same architecture. Prints AUC of the score, the smallest p on a negative, the largest p on a positive,
extraction seconds and verification queries.

The API lines: owner, its FTAL copy (3 epochs, lr 1e-3) and independents (MLP and CNN, attacker split)
behind logits, softmax, softmax T=3, probabilities rounded to 3 and 2 decimals, Gaussian logit noise
(sigma 0.05 and 0.2, one query and 64 repeats averaged), one-hot labels; independents trained from the
owner's initialisation (same build seed, attacker split); torch-pruning (if installed) of 20/30/40/50 % of
the hidden neurons by L2 magnitude, before and after 3 epochs of FTAL.

The ResNet line (`--resnet`, run alone): TAFA extraction (n = 100) on the zoo's ResNet-18 for 3x32x32 inputs
against one training epoch of the same model on 2,048 images (random inputs and labels: the cost of an
epoch does not depend on the data), each in its own subprocess with one thread: wall seconds and peak
resident memory (ru_maxrss of that child, read with os.wait4: the per-child form of
getrusage(RUSAGE_CHILDREN)), and the ratios extraction / epoch of wall seconds and of the child's CPU
seconds (user + system; one thread each, so the CPU ratio holds on a machine shared with other work).
Goals (issue 25): peak RSS <= 1.5 GB and time <= one epoch. A child that only imports torch and builds
the model gives the floor both share.

    python benchmarks/tafa.py [--quick] [--api-only]

`--quick` (what the test runs): 3 negatives per task, the classification line on digits (not mnist5k), the
API lines for the MLP owner only and five transforms (no 64-repeat averaging), one independent from the
owner's initialisation, and torch-pruning at 50 % only.
    python benchmarks/tafa.py --resnet [--n 100] [--images 2048] [--width 64] [--before OLD/src]

`--before OLD/src` also runs the extraction with the modelseal found in OLD/src (e.g. `git archive` of an
earlier commit) in the same run, for a before/after comparison on the same machine.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
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
    name = "digits" if QUICK else "mnist5k"
    d = ms.data.load(name, seed=0)

    def train(data, seed, epochs=5):
        m = ms.models.build("cnn", d.meta, seed=seed)
        ms.train.fit(m, data, epochs=epochs, seed=seed, progress=False)
        return m

    owner = train(d.owner, 0)
    k = 3 if QUICK else 6
    negatives = [train(d.attacker if s % 2 else d.owner, 100 + s) for s in range(k)]
    ft_fast = attack("finetune")(mode="ftal", epochs=3, lr=1e-3).apply(owner, d.attacker)
    return judge(f"classification/{name}-cnn", owner, d.meta, attacked(owner, d.attacker, ft_lr=3e-4),
                 negatives, extra={"ftal_lr1e-3": ft_fast})


def regression() -> dict:
    d = ms.data.load("diabetes", seed=0)

    def train(data, seed):
        m = ms.models.build("mlp", d.meta, seed=seed, hidden=(64, 64))
        ms.train.fit(m, data, epochs=50, seed=seed, progress=False)
        return m

    owner = train(d.owner, 0)
    negatives = [train(d.attacker if s % 2 else d.owner, 100 + s) for s in range(3 if QUICK else 10)]
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
    negatives = [train(d.attacker if s % 2 else d.owner, 100 + s).decoder for s in range(3 if QUICK else 10)]
    dec = owner.decoder
    positives = {"self": dec, "ftal": tuned.decoder, "prune50": attack("prune")(amount=0.5).apply(dec),
                 "int8": attack("quantize")(bits=8).apply(dec)}
    return judge("generative/digits-vae-decoder", dec, ms.data.InputSpec((8,), (-3.0, 3.0)), positives,
                 negatives)


class API(torch.nn.Module):
    """The network behind an output transform, as a served API returns it."""

    def __init__(self, model, kind: str):
        super().__init__()
        self.model, self.kind = model, kind
        self.gen = torch.Generator().manual_seed(5)

    def forward(self, x):
        z = self.model(x)
        k = self.kind
        if k.startswith("softmax"):
            return (z / (3.0 if k == "softmax-T3" else 1.0)).softmax(1)
        if k.startswith("round"):
            q = 10 ** int(k[-1])
            return torch.round(z.softmax(1) * q) / q
        if k.startswith("noise"):
            return z + float(k[5:].split("x")[0]) * torch.randn(z.shape, generator=self.gen)
        if k == "one-hot":
            return torch.nn.functional.one_hot(z.argmax(1), z.shape[1]).float()
        return z


TRANSFORMS = ("logits", "softmax", "softmax-T3", "round3", "round2", "noise0.05", "noise0.05x64", "noise0.2x64",
              "one-hot")


def _p(v) -> dict:
    return {"p": float(f"{v.p_value:.3g}"), "score": round(v.score, 3), "owned": v.owned} if v.judged \
        else {"not_judged": v.details["not_judged"]}


def api_and_pruning(arch: str) -> dict:
    d = ms.data.load("digits", seed=0)

    def train(a, data, build_seed, fit_seed):
        m = ms.models.build(a, d.meta, seed=build_seed)
        ms.train.fit(m, data, epochs=10, seed=fit_seed, progress=False)
        return m

    owner = train(arch, d.owner, 0, 0)
    tuned = attack("finetune")(mode="ftal", epochs=3).apply(owner, d.attacker)
    k = 2 if QUICK else 4
    negatives = [train("mlp" if i % 2 else "cnn", d.attacker, 100 + i, 100 + i) for i in range(k)]
    same_init = [train(arch, d.attacker, 0, s) for s in ((1,) if QUICK else (1, 2, 3))]
    t0 = time.perf_counter()
    key = ms.methods.get("tafa")().extract(owner, d.meta)
    seconds = time.perf_counter() - t0
    out: dict = {"task": f"api/digits-{arch}", "owner_accuracy": ms.train.evaluate(owner, d.test),
                 "extract_seconds": round(seconds, 2), "transforms": {}}
    for kind in ("logits", "softmax", "round2", "noise0.05", "one-hot") if QUICK else TRANSFORMS:
        reps = int(kind.split("x")[1]) if kind.startswith("noise") and "x" in kind else 1
        judge_ = lambda m, kind=kind, reps=reps: ms.verify(ms.Suspect(API(m, kind)), key, repeats=reps)  # noqa: E731
        row = {"owner": _p(judge_(owner)), "ftal": _p(judge_(tuned)), "queries": 1500 * reps}
        neg = [judge_(m) for m in negatives]
        row["negatives_min_p"] = min(v.p_value for v in neg)
        row["negatives_owned"] = sum(v.owned for v in neg)
        row["negatives_max_score"] = round(max(v.score for v in neg), 3)
        row["output_scale"] = judge_(owner).details.get("output_scale")
        out["transforms"][kind] = row
    out["same_init_independents"] = [_p(ms.verify(m, key)) for m in same_init]
    try:
        import torch_pruning as tp
    except ImportError:
        out["pruning"] = "torch-pruning not installed"
        return out
    out["pruning"] = {}
    for ratio in (0.5,) if QUICK else (0.2, 0.3, 0.4, 0.5):
        m = copy.deepcopy(owner).eval()
        last = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)][-1]
        tp.pruner.MagnitudePruner(m, torch.rand(1, *d.meta.input_shape),
                                  importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                                  ignored_layers=[last]).step()
        ft = attack("finetune")(mode="ftal", epochs=3).apply(m, d.attacker)
        out["pruning"][str(ratio)] = {"accuracy": ms.train.evaluate(m, d.test), "p": _p(ms.verify(m, key)),
                                      "finetuned_accuracy": ms.train.evaluate(ft, d.test),
                                      "finetuned_p": _p(ms.verify(ft, key))}
    return out


def _arg(name: str, default: int) -> int:
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def resnet_child(job: str) -> dict:
    """One measured job in this (child) process: 'extract', 'epoch' or 'idle' (imports and model only)."""
    torch.set_num_threads(1)
    n, images, width = _arg("--n", 100), _arg("--images", 2048), _arg("--width", 64)
    model = ms.models.build("resnet18", input_shape=(3, 32, 32), num_classes=10, seed=0, width=width)
    t0 = time.perf_counter()
    if job == "extract":
        key = ms.methods.get("tafa")(n=n, seed=0).extract(model, ms.data.InputSpec((3, 32, 32), (0.0, 1.0)),
                                                     progress=False)
        extra = {"digest": key.digest()}
    elif job == "epoch":
        gen = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(torch.rand(images, 3, 32, 32, generator=gen),
                                              torch.randint(10, (images,), generator=gen))
        ms.train.fit(model, data, epochs=1, seed=0, progress=False)
        extra = {}
    else:
        extra = {}
    return {"job": job, "seconds": time.perf_counter() - t0, **extra}


def resnet() -> dict:
    n, images, width = _arg("--n", 100), _arg("--images", 2048), _arg("--width", 64)
    out: dict = {"task": "resnet18-3x32x32 extraction vs one epoch", "n": n, "epoch_images": images, "width": width,
                 "threads": 1}
    before = sys.argv[sys.argv.index("--before") + 1] if "--before" in sys.argv else None
    for job in ("idle", "extract", "epoch") + (("extract_before",) if before else ()):
        args = [sys.executable, __file__, "--resnet-child", job.split("_")[0], "--n", str(n), "--images",
                str(images), "--width", str(width)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if job == "extract_before":
            env["PYTHONPATH"] = before
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None
        text = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"resnet child {job} failed with exit code {proc.returncode}")
        res = json.loads(text)
        out[f"{job}_seconds"] = round(res["seconds"], 2)
        out[f"{job}_cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 2)
        out[f"{job}_peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux: kilobytes
        if "digest" in res:
            out[f"{job}_key_digest"] = res["digest"]
    out["time_ratio_extract_over_epoch"] = round(out["extract_seconds"] / out["epoch_seconds"], 3)
    # CPU seconds of the whole child (imports included, the same in both): with one thread each, the
    # ratio that other work on a shared machine does not move
    out["cpu_ratio_extract_over_epoch"] = round(out["extract_cpu_seconds"] / out["epoch_cpu_seconds"], 3)
    out["goals"] = {"rss_le_1.5GB": out["extract_peak_rss_mb"] <= 1536,
                    "time_le_one_epoch": out["extract_cpu_seconds"] <= out["epoch_cpu_seconds"]
                    and out["extract_seconds"] <= out["epoch_seconds"]}
    if before:
        out["before_src"] = before
        out["cpu_ratio_before_over_epoch"] = round(out["extract_before_cpu_seconds"] / out["epoch_cpu_seconds"], 3)
    del out["idle_seconds"]
    return out


if __name__ == "__main__":
    if "--resnet-child" in sys.argv:
        print(json.dumps(resnet_child(sys.argv[sys.argv.index("--resnet-child") + 1])), flush=True)
        sys.exit(0)
    if "--resnet" in sys.argv:
        print(json.dumps(resnet()), flush=True)
        sys.exit(0)
    torch.set_num_threads(2)
    runs = [] if "--api-only" in sys.argv else [regression, generative, classification]
    for run in runs:
        print(json.dumps(run()), flush=True)
    for arch in ("mlp",) if QUICK else ("mlp", "cnn"):
        print(json.dumps(api_and_pruning(arch)), flush=True)
