"""The attack library: each attack leaves its input alone, is deterministic, and does what it says."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import modelseal as ms
from modelseal import attacks
from modelseal.attacks import AttackError
from modelseal.attacks.pruning import FinePrune, prunable
from modelseal.errors import ModelSealError

NAMES = ["average", "distill", "fine-prune", "finetune", "noise", "prune", "quantize", "reset-outliers"]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.fixture(scope="module")
def small(mnist):
    return mnist.attacker.subset(300, seed=1)


@pytest.fixture(scope="module")
def peers(mnist):
    out = []
    for seed in (11, 12):
        m = ms.models.build("cnn", mnist.meta, seed=seed)
        ms.train.fit(m, mnist.attacker.subset(200, seed=seed), epochs=1, seed=seed, progress=False)
        out.append(m)
    return out


def _attack(name: str, peers):
    quick = {
        "average": {"others": peers},
        "distill": {"epochs": 1},
        "fine-prune": {"epochs": 1},
        "finetune": {"epochs": 1},
    }
    return attacks.get(name)(**quick.get(name, {}))


def test_registry_lists_every_attack():
    assert set(NAMES) <= set(attacks.names())
    with pytest.raises(ModelSealError, match="unknown attack"):
        attacks.get("no-such-attack")


@pytest.mark.parametrize("name", NAMES)
def test_input_is_never_mutated_and_spec_kept(name, owner_cnn, small, peers):
    before = _state(owner_cnn)
    out = _attack(name, peers).apply(owner_cnn, small)
    assert out is not owner_cnn
    assert _same(before, _state(owner_cnn))
    assert out.modelseal_spec["input_shape"] == owner_cnn.modelseal_spec["input_shape"]
    assert out(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name,kw", [
    ("finetune", {"mode": "ftal", "epochs": 1, "fraction": 0.5}),
    ("finetune", {"mode": "rtll", "epochs": 1}),
    ("fine-prune", {"amount": 0.3, "epochs": 1}),
    ("distill", {"epochs": 1}),
    ("noise", {"std": 0.05}),
])
def test_same_seed_same_weights(name, kw, owner_cnn, small):
    a = attacks.get(name)(seed=3, **kw).apply(owner_cnn, small)
    b = attacks.get(name)(seed=3, **kw).apply(owner_cnn, small)
    c = attacks.get(name)(seed=4, **kw).apply(owner_cnn, small)
    assert _same(_state(a), _state(b))
    assert not _same(_state(a), _state(c))


def _conv_linear_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for _, m in prunable(model)]


def test_prune_global_exact_sparsity(owner_cnn, mnist):
    out = attacks.get("prune")(amount=0.5).apply(owner_cnn)
    ws = _conv_linear_weights(out)
    n = sum(w.numel() for w in ws)
    zeros = sum(int((w == 0).sum()) for w in ws)
    assert zeros == round(0.5 * n)
    # the kept weights are the largest: no kept |w| is below a pruned original |w|
    orig = torch.cat([w.reshape(-1).abs() for w in _conv_linear_weights(owner_cnn)])
    new = torch.cat([w.reshape(-1) for w in ws])
    assert orig[new != 0].min() >= orig[new == 0].max()
    # biases are untouched; layers differ in sparsity under global scope
    for (_, a), (_, b) in zip(prunable(owner_cnn), prunable(out), strict=True):
        assert torch.equal(a.bias, b.bias)
    assert len({round(float((w == 0).float().mean()), 2) for w in ws}) > 1
    assert ms.train.evaluate(out, mnist.test) > 0.85


def test_prune_layer_exact_sparsity_and_plain_model(owner_cnn, tmp_path):
    out = attacks.get("prune")(amount=0.75, scope="layer").apply(owner_cnn)
    for w in _conv_linear_weights(out):
        assert int((w == 0).sum()) == round(0.75 * w.numel())
    assert not any("_orig" in k or "_mask" in k for k in out.state_dict())
    ms.models.save_model(out, tmp_path / "pruned.safetensors")
    back = ms.models.load_model(tmp_path / "pruned.safetensors")
    assert _same(_state(out), _state(back))


def test_prune_counts_existing_zeros(owner_cnn):
    once = attacks.get("prune")(amount=0.5).apply(owner_cnn)
    twice = attacks.get("prune")(amount=0.3).apply(once)  # already 50 % zero: nothing more to remove
    assert _same(_state(once), _state(twice))
    zero = attacks.get("prune")(amount=0.0).apply(owner_cnn)
    assert _same(_state(owner_cnn), _state(zero))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantize_levels(bits, owner_cnn, mnist):
    out = attacks.get("quantize")(bits=bits).apply(owner_cnn)
    for _, m in prunable(out):
        for p in (m.weight, m.bias):
            assert p.unique().numel() <= 2**bits
    if bits == 8:
        base = ms.train.evaluate(owner_cnn, mnist.test)
        assert abs(ms.train.evaluate(out, mnist.test) - base) <= 0.01


def test_ftll_changes_only_last_layer(owner_cnn, small):
    head, _ = ms.models.last_linear(owner_cnn)
    before = _state(owner_cnn)
    out = attacks.get("finetune")(mode="ftll", epochs=1).apply(owner_cnn, small)
    assert _changed(before, _state(out)) == {f"{head}.weight", f"{head}.bias"}


def test_rtll_reinitialises_last_layer(owner_cnn, small):
    head, _ = ms.models.last_linear(owner_cnn)
    before = _state(owner_cnn)
    out = attacks.get("finetune")(mode="rtll", epochs=0).apply(owner_cnn, small)
    after = _state(out)
    assert _changed(before, after) == {f"{head}.weight", f"{head}.bias"}
    # a fresh layer: no correlation with the owner's head
    pair = [before[f"{head}.weight"].reshape(-1), after[f"{head}.weight"].reshape(-1)]
    corr = torch.corrcoef(torch.stack(pair))
    assert abs(float(corr[0, 1])) < 0.2
    trained = attacks.get("finetune")(mode="rtll", epochs=1).apply(owner_cnn, small)
    assert _changed(before, _state(trained)) == {f"{head}.weight", f"{head}.bias"}


def test_ftal_and_rtal_change_all_layers(owner_cnn, small):
    before = _state(owner_cnn)
    for mode in ("ftal", "rtal"):
        out = attacks.get("finetune")(mode=mode, epochs=1).apply(owner_cnn, small)
        assert _changed(before, _state(out)) == set(before)


def test_finetune_fraction_on_any_dataset(owner_cnn, small):
    plain = TensorDataset(small.x, small.y)
    a = attacks.get("finetune")(mode="ftll", epochs=1, fraction=0.1, seed=2).apply(owner_cnn, plain)
    b = attacks.get("finetune")(mode="ftll", epochs=1, fraction=0.1, seed=2).apply(owner_cnn, plain)
    assert _same(_state(a), _state(b))


def test_average_is_the_mean(owner_cnn, peers):
    out = attacks.get("average")(others=peers).apply(owner_cnn)
    states = [_state(m) for m in (owner_cnn, *peers)]
    for k, v in _state(out).items():
        assert torch.allclose(v, sum(s[k] for s in states) / 3, atol=1e-6)
    weighted = attacks.get("average")(others=peers[:1], weights=[3, 1]).apply(owner_cnn)
    k = "features.0.weight"
    assert torch.allclose(weighted.state_dict()[k], 0.75 * states[0][k] + 0.25 * states[1][k], atol=1e-6)


def test_average_rejects_other_architectures(owner_cnn, mnist):
    mlp = ms.models.build("mlp", mnist.meta, seed=0)
    with pytest.raises(AttackError, match="architecture"):
        attacks.get("average")(others=[mlp]).apply(owner_cnn)
    wide = ms.models.build("cnn", mnist.meta, seed=0, hidden=32)
    with pytest.raises(AttackError, match="shape"):
        attacks.get("average")(others=[wide]).apply(owner_cnn)


@pytest.mark.slow
def test_distill_reaches_accuracy_same_and_other_architecture(owner_cnn, mnist):
    same = attacks.get("distill")(epochs=3, seed=0).apply(owner_cnn, mnist.attacker)
    assert type(same) is type(owner_cnn)
    assert ms.train.evaluate(same, mnist.test) > 0.8
    attack = attacks.get("distill")(student="mlp", epochs=3, labels="hard", seed=0)
    mlp = attack.apply(owner_cnn, mnist.attacker)
    assert mlp.modelseal_spec["name"] == "mlp"
    assert ms.train.evaluate(mlp, mnist.test) > 0.8


def test_distill_student_is_fresh(owner_cnn, small, mnist):
    student = attacks.get("distill")(epochs=0).apply(owner_cnn, small)
    fresh = ms.models.build("cnn", mnist.meta, seed=0)
    assert _same(_state(student), _state(fresh))


def test_distill_regression_teacher():
    torch.manual_seed(0)
    x = torch.rand(200, 8)
    teacher = ms.models.build("mlp", input_shape=(8,), num_classes=1, seed=1, hidden=(16,))
    data = TensorDataset(x, torch.zeros(200))
    student = attacks.get("distill")(epochs=30, lr=1e-2).apply(teacher, data)
    err = (ms.train.predict(student, x) - ms.train.predict(teacher, x)).pow(2).mean()
    assert float(err) < float(ms.train.predict(teacher, x).var())


def test_fine_prune_zeros_least_active_channels(owner_cnn, small):
    attack = FinePrune(amount=0.5, epochs=1)
    name, channels = attack.pruned_channels(owner_cnn, small)
    assert name == "features.3" and len(channels) == 16
    out = attack.apply(owner_cnn, small)
    layer = dict(out.named_modules())[name]
    assert torch.count_nonzero(layer.weight[channels]) == 0 and torch.count_nonzero(layer.bias[channels]) == 0
    keep = [c for c in range(32) if c not in channels]
    assert torch.count_nonzero(layer.weight[keep]) > 0
    # fine-tuning did move the other layers
    k = "classifier.1.weight"
    assert not torch.equal(out.state_dict()[k], owner_cnn.state_dict()[k])


def test_fine_prune_mlp_uses_penultimate_linear(mnist, small):
    mlp = ms.models.build("mlp", mnist.meta, seed=0)
    name, channels = FinePrune(amount=0.25).pruned_channels(mlp, small)
    assert name == "net.3" and len(channels) == 32


def test_noise_scale(owner_cnn):
    for relative in (True, False):
        out = attacks.get("noise")(std=0.1, relative=relative, seed=1).apply(owner_cnn)
        w0 = owner_cnn.state_dict()["classifier.1.weight"]
        delta = out.state_dict()["classifier.1.weight"] - w0
        expect = 0.1 * float(w0.std()) if relative else 0.1
        assert abs(float(delta.std()) / expect - 1) < 0.05
        assert abs(float(delta.mean())) < 0.1 * expect


def test_reset_outliers(owner_cnn):
    model = copy.deepcopy(owner_cnn)
    with torch.no_grad():
        model.classifier[1].weight[0, :5] = 10.0
    out = attacks.get("reset-outliers")(z=3.0).apply(model)
    for (name, p0), p1 in zip(model.named_parameters(), out.parameters(), strict=True):
        if p0.numel() < 2:
            continue
        mean, std = p0.double().mean(), p0.double().std()
        far = (p0.double() - mean).abs() > 3.0 * std
        assert torch.allclose(p1[far].double(), mean.expand(int(far.sum())).to(p1.dtype).double()), name
        assert torch.equal(p1[~far], p0[~far]), name
    assert float(out.classifier[1].weight[0, :5].detach().abs().max()) < 1.0


@pytest.mark.parametrize("name,kw", [
    ("prune", {"amount": 1.0}), ("prune", {"amount": -0.1}), ("prune", {"scope": "row"}),
    ("fine-prune", {"amount": 1.5}), ("quantize", {"bits": 0}), ("quantize", {"bits": 2.5}),
    ("finetune", {"mode": "xx"}), ("finetune", {"fraction": 0.0}), ("finetune", {"fraction": 1.5}),
    ("finetune", {"lr": 0}), ("finetune", {"epochs": -1}), ("noise", {"std": -1}),
    ("distill", {"student": "vgg99"}), ("distill", {"labels": "medium"}), ("distill", {"temperature": 0}),
    ("average", {"others": []}), ("reset-outliers", {"z": 0}),
])
def test_bad_parameters_raise(name, kw):
    with pytest.raises(ModelSealError) as e:
        attacks.get(name)(**kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["finetune", "fine-prune", "distill"])
def test_training_attacks_need_data(name, owner_cnn):
    with pytest.raises(AttackError, match="needs data"):
        attacks.get(name)().apply(owner_cnn)


def test_average_weight_count_checked(owner_cnn, peers):
    with pytest.raises(AttackError, match="weights"):
        attacks.get("average")(others=peers, weights=[1, 1])
    with pytest.raises(AttackError):
        attacks.get("average")(others=peers, weights=[1, -1, 1])


def test_ftll_keeps_batchnorm_statistics(mnist):
    net = ms.models.build("resnet18", mnist.meta, seed=0, width=4)
    before = _state(net)
    out = attacks.get("finetune")(mode="ftll", epochs=1).apply(net, mnist.attacker.subset(64, seed=0))
    assert _changed(before, _state(out)) == {"fc.weight", "fc.bias"}
    assert all(p.requires_grad for p in out.parameters())


# ------------------------------------------------------------------------------------------- progress
TRAINING = {"finetune": {"epochs": 1}, "distill": {"epochs": 1}, "fine-prune": {"epochs": 1},
            "overwrite": {"n": 8}}


@pytest.mark.parametrize("name", sorted(TRAINING))
def test_training_attacks_report_progress_through_the_one_protocol(name, mnist, small):
    """Every attack that trains reports its work through `Attack.progress` (the runtime's protocol): a
    callable sees the units done rise to the total, under a description that names the attack."""
    model = ms.models.build("cnn", mnist.meta, seed=3)
    ms.train.fit(model, small, epochs=1, seed=3, progress=False)
    seen: list[tuple[int, int, str]] = []
    atk = attacks.get(name)(**TRAINING[name])
    atk.progress = lambda done, total, description, info: seen.append((done, total, description))
    atk.apply(model, small)
    assert seen, f"{name} reported no progress"
    done, total, description = seen[-1]
    assert done == total > 0 and [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
    assert description


def test_the_attack_command_shows_progress_lines_when_stderr_is_not_a_terminal(tmp_path):
    """CI logs and notebooks (stderr not a terminal) get plain periodic progress lines, not a bar."""
    import subprocess
    import sys

    d = ms.data.load("digits")
    m = ms.models.build("mlp", d.meta, seed=0)
    ms.models.save_model(m, tmp_path / "m.safetensors")
    r = subprocess.run([sys.executable, "-m", "modelseal.cli", "attack", "finetune", str(tmp_path / "m.safetensors"),
                        "--data", "digits", "--set", "epochs=2", "--out", str(tmp_path / "a.safetensors")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "attack ftal:" in ln]
    assert lines and lines[-1].split("attack ftal: ")[1].split()[0].split("/")[0] == \
        lines[-1].split("attack ftal: ")[1].split()[0].split("/")[1], r.stderr


def test_run_returns_a_fresh_typed_result_and_apply_the_model(owner_cnn, small):
    atk = attacks.get("finetune")(epochs=1, fraction=0.5, progress=False)
    first = atk.run(owner_cnn, small)
    assert isinstance(first, attacks.Attacked) and isinstance(first.model, nn.Module)
    assert first.cost["examples"] == 150 and first.cost["data_fraction"] == 0.5 and first.cost["wall_s"] >= 0
    with pytest.raises(AttributeError):
        first.cost = {}  # type: ignore[misc]  # frozen
    second = atk.run(owner_cnn, small.subset(100, seed=2))
    assert first.cost["examples"] == 150 and second.cost["examples"] == 50  # one record per run
    assert atk.cost == second.cost and atk.cost is not second.cost  # apply's callers read a copy of the last
    assert isinstance(vars(attacks.Attack).get("cost"), property)  # no mutable class-level record
    assert _same(_state(atk.apply(owner_cnn, small)), _state(first.model))  # deterministic given the seed


def test_apply_is_final_and_refuses_non_finite_weights(owner_cnn):
    from dataclasses import dataclass

    with pytest.raises(TypeError, match="write _apply"):
        @dataclass
        class Bad(attacks.Attack):
            def apply(self, model, data=None):
                return model

    broken = copy.deepcopy(owner_cnn)
    with torch.no_grad():
        next(broken.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(AttackError, match="not finite|NaN|inf"):
        attacks.get("prune")(amount=0.1).run(broken)


def test_family_is_declared_once_and_plugins_give_theirs():
    from dataclasses import dataclass

    assert {n: attacks.get(n).family for n in attacks.names()} == attacks.FAMILIES

    @dataclass
    class Passthrough(attacks.Attack):
        def _apply(self, model, data=None):
            return model

    attacks.register("test-passthrough", family="output")(Passthrough)
    try:
        assert attacks.get("test-passthrough").family == "output"
        assert "test-passthrough" in attacks.by_family()["output"]
    finally:
        attacks.unregister("test-passthrough")
    assert "test-passthrough" not in attacks.names() and "test-passthrough" not in attacks.FAMILIES
    with pytest.raises(ModelSealError, match="family 'modification', not 'input'"):
        attacks.register("prune", family="input")(Passthrough)
