"""Everything that computes runs on CUDA: training, each protect verb of every registered method (and its
judge or restore verb), one attack of every attack family, and a tiny `bench run`.

Marked `gpu` and skipped where CUDA is absent, so a plain `pytest` and CI collect these tests and skip them.
`MODELSEAL_TEST_DEVICE=cpu pytest -m gpu tests/test_gpu.py` runs the same tests on the CPU (to check the
tests themselves on a machine without a GPU).
"""

from __future__ import annotations

import copy
import os
from importlib import resources

import pytest
import torch
from torch.utils.data import DataLoader

import modelseal as ms
from modelseal import attacks, bench, methods

DEVICE = os.environ.get("MODELSEAL_TEST_DEVICE", "cuda")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                 reason="needs a CUDA device")]

# Small settings so every protection runs in seconds; the defaults for the others.
SMALL = {"trigger-set": {"n": 30}, "c-examples": {"n": 20, "steps": 20}, "tafa": {"n": 40, "steps": 8},
         "deepmarks": {"users": 7}}
# One attack of every family, with light settings (attacks that train: one epoch).
ATTACKS = {
    "input": ("input-noise", {}),
    "output": ("label-only", {}),
    "rejection": ("reject-softmax", {}),
    "modification": ("finetune", {"mode": "ftal", "epochs": 1}),
    "extraction": ("distill", {"epochs": 1}),
    "chain": ("chain", {"steps": [{"attack": "prune", "params": {"amount": 0.3}},
                                  {"attack": "finetune", "params": {"mode": "ftll", "epochs": 1}}]}),
}


def _on_device(model: torch.nn.Module) -> bool:
    want = torch.device(DEVICE).type
    return all(p.device.type == want for p in model.parameters())


@pytest.fixture(scope="module")
def digits():
    return ms.data.load("digits", seed=0)


@pytest.fixture(scope="module")
def owner(digits):
    model = ms.models.build("cnn", digits.meta, seed=0)
    ms.train.fit(model, digits.owner, epochs=6, seed=0, device=DEVICE, progress=False)
    return model


def test_fit_trains_on_the_device(owner, digits):
    assert _on_device(owner)
    assert ms.train.evaluate(owner, digits.test) > 0.8
    m = ms.models.build("mlp", digits.meta, seed=1)
    hist = ms.train.fit(m, DataLoader(digits.owner, batch_size=32, shuffle=True, pin_memory=True), epochs=2,
                        device=DEVICE, progress=False)
    assert _on_device(m) and hist["samples"] == 2 * len(digits.owner)


@pytest.mark.parametrize("name", methods.names())
def test_every_protect_verb_runs_on_the_device(name, owner, digits):
    mi = methods.info(name)
    method = mi.cls(seed=0, **SMALL.get(name, {}))
    done = methods.protect(method, copy.deepcopy(owner), digits.owner, digits.meta, progress=False)
    assert done.models and all(_on_device(m) for m in done.models if isinstance(m, torch.nn.Module))
    if not mi.judges:  # a lock: its key restores the owner bit for bit, on the device
        restored = methods.restore(done.models[0], done.key)
        assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(),
                                                     owner.state_dict().values(), strict=True))
        return
    verifier: dict = {"alpha": 1e-2}
    if "references" in mi.cls.verify_params:
        refs = []
        for s in range(3):
            r = ms.models.build("cnn", digits.meta, seed=100 + s)
            ms.train.fit(r, digits.attacker, epochs=2, seed=100 + s, device=DEVICE, progress=False)
            refs.append(r)
        verifier["references"] = refs
    v = methods.judge(ms.Suspect(done.models[0]), done.key, commitment=done.commitment, **verifier)
    assert v.method == name and (v.p_value is None or 0.0 <= v.p_value <= 1.0)


def test_one_attack_of_every_family_runs_on_the_device(owner, digits):
    assert set(attacks.by_family()) <= set(ATTACKS), "a new attack family: add one of its attacks here"
    for family, (name, params) in ATTACKS.items():
        atk = attacks.get(name)(seed=0, **params)
        out = atk.apply_many([copy.deepcopy(owner)], digits.attacker)
        assert _on_device(out), family
        if atk.acts_on == "queries":  # the answers change, not the model: what a verifier would query
            labels = atk.wrap(ms.Suspect(out), digits.meta).labels(digits.test.x[:64])
            assert labels.shape == (64,), family
        else:
            assert 0.0 <= ms.train.evaluate(out, digits.test) <= 1.0, family  # runs; quality is tested elsewhere


def test_tiny_bench_run_on_the_device(tmp_path):
    text = resources.files("modelseal.bench").joinpath("scenarios", "tiny.toml").read_text()
    summary = bench.run(bench.parse(text, "<tiny>"), tmp_path / "run", device=DEVICE)
    assert summary["errors"] == 0 and summary["finished"] == summary["cells"] > 0
