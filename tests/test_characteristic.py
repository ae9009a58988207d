"""Characteristic-example fingerprints (C / RC / LTRC) on the mnist5k CNN."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import modelseal as ms
from modelseal.errors import KeyMismatchError, ModelError, ModelSealError
from modelseal.methods.characteristic import CharacteristicExamples, match_rate, uniqueness

CE = ms.methods.get("c-examples")
FAST = dict(n=100, steps=100, step_size=0.005, M=4)


def _prune(model: nn.Module, amount: float) -> nn.Module:
    try:
        from modelseal import attacks

        return attacks.get("prune")(amount=amount, scope="layer").apply(model)
    except ModelSealError:
        m = copy.deepcopy(model)
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    w = mod.weight
                    k = int(amount * w.numel())
                    if k:
                        w[w.abs() <= w.abs().flatten().kthvalue(k).values] = 0
        return m


def _quantize8(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            s = p.abs().max().clamp_min(1e-12) / 127
            p.copy_((p / s).round() * s)
    return m


@pytest.fixture(scope="module")
def owner(_owner_cnn):
    return copy.deepcopy(_owner_cnn)


@pytest.fixture(scope="module")
def references(mnist):
    """Independent reference models trained apart from the test negatives (seeds 201-204, not 101-103):
    the first two (CNN, MLP) filter the examples at extraction, the last two calibrate the null."""
    out = []
    for arch, seed in [("cnn", 201), ("mlp", 202), ("cnn", 203), ("mlp", 204)]:
        m = ms.models.build(arch, mnist.meta, seed=seed)
        ms.train.fit(m, mnist.attacker, epochs=5, seed=seed, progress=False)
        out.append(m)
    return out


@pytest.fixture(scope="module")
def keys(owner, mnist):
    return {v: CE(variant=v, **FAST).extract(owner, mnist.meta) for v in ("c", "rc", "ltrc")}


def test_owner_matches_all(keys, owner):
    for v, key in keys.items():
        assert key.params["n"] == 100, v
        assert match_rate(owner, key) == 1.0
        verdict = ms.verify(owner, key)
        # without the verifier's reference models there is no calibrated null: not judged, never owned
        assert not verdict.owned and not verdict.judged and verdict.score == 1.0
        assert "no reference models" in verdict.details["not_judged"]


def test_rc_survives_pruning_better_than_c(keys, owner):
    # The 50 %-pruned copy is layer-wise magnitude pruning (half of every layer's weights); global 50 %
    # pruning leaves this CNN's labels on both sets intact (both match 1.0), so it cannot tell them apart.
    # Measured with the defaults (margin 2 for both, RC: 4 noisy copies, delta 0.3, stop only when the
    # target leads on every copy), n=100: RC 0.98 / 0.87 vs C 0.68 / 0.74 for extraction seeds 0 / 1.
    pruned = _prune(owner, 0.5)
    c, rc = match_rate(pruned, keys["c"]), match_rate(pruned, keys["rc"])
    assert rc > c + 0.05, (rc, c)


def _transfer(models, key) -> float:
    return sum(match_rate(m, key) for m in models) / len(models)


def test_ltrc_transfers_less_than_rc(keys, independent_models):
    # LTRC is RC plus the high-pass filter: the filter must cut RC's transfer to independent models.
    # Measured (n=100, seed 0, 5 independent models): LTRC 0.58 vs RC 0.71.
    lt, rc = _transfer(independent_models, keys["ltrc"]), _transfer(independent_models, keys["rc"])
    assert lt < rc - 0.05, (lt, rc)


# "LTRC transfers less than C" (the paper's claim for the variants as it defines them) is not shown on mnist5k
# and is no longer tested as an expected failure: measured mean transfer over the 5 independent models, n=100,
# LTRC 0.58 vs C 0.53 with the defaults (0.51 vs 0.53 at margin 1; 0.42 vs 0.53 at radius 0.2, but then LTRC
# is less robust than C). Low transfer is reached by the conferrable selection instead: see
# test_selection_cuts_transfer_on_digits and benchmarks/c_examples.py.


@pytest.fixture(scope="module")
def calibrated(owner, mnist, references):
    return CE(variant="ltrc", n=100).extract(owner, mnist.meta)


@pytest.fixture(scope="module")
def positives(owner, mnist):
    return {"ftal": ms.attacks.get("finetune")(mode="ftal", epochs=3).apply(owner, mnist.attacker),
            "prune30": ms.attacks.get("prune")(amount=0.3).apply(owner),
            "quant8": ms.attacks.get("quantize")(bits=8).apply(owner)}


@pytest.mark.slow
def test_calibrated_null_accuses_no_independent_model(owner, calibrated, independent_models, references):
    for i, m in enumerate(independent_models):
        v = ms.verify(m, calibrated, references=references)
        assert v.judged and not v.owned and v.p_value > v.alpha, (i, v.summary(), v.details["reference_rates"])
        assert v.details["null_kind"] == "beta-binomial" and v.details["references"] == 4
        # even at a lenient alpha: 4 references cannot support p < 1/5
        assert not ms.verify(m, calibrated, references=references, alpha=0.1).owned
    # why a null is needed at all: against 1/C, independent CNNs' match counts look far too significant
    naive = [ms.stats.binomial_tail(int(match_rate(m, calibrated) * 100), 100, 0.1) for m in independent_models]
    assert min(naive) <= 1e-6


@pytest.mark.slow
def test_uniqueness_score_of_calibrated_key(calibrated, positives, independent_models):
    u = uniqueness(calibrated, list(positives.values()), independent_models)
    assert u["uniqueness_score"] == pytest.approx(u["robustness"] - u["transferability"])
    # measured: robustness 0.94 (FTAL 0.82, pruning 30 % 1.0, 8-bit 1.0), transferability 0.58
    assert u["robustness"] > u["transferability"] + 0.1, u


# "positives owned" at alpha 1e-6 with 4 references cannot hold by construction (4 references cannot support
# p < 1/5) and is replaced by test_pool_selection_owns_positives_at_alpha_001 on digits (R = 99, alpha 0.01).
# Measured before the selection on mnist5k: independent CNNs match 0.6-0.99 of the examples, the references
# disagree (CNN ~0.7, MLP ~0.2), so the beta-binomial null could not reach p <= 1e-6 for the FTAL copy.


def test_beta_binomial_null_is_conservative():
    from modelseal.methods.characteristic import null_tail
    from modelseal.methods.characteristic import reference_null as beta_binomial_null

    spread = beta_binomial_null([10, 60], 100)  # references that disagree a lot: large overdispersion
    tight = beta_binomial_null([30, 31], 100)
    assert spread["null_rho"] > tight["null_rho"] >= 0.1 and spread["null_p0"] == 0.6
    # a model matching 80 of 100 is far less surprising when independent models vary a lot
    assert null_tail(80, 100, spread) > null_tail(80, 100, tight)
    # never less conservative than the binomial with the same mean
    assert null_tail(80, 100, tight) >= ms.stats.binomial_tail(80, 100, tight["null_p0"])
    zero = beta_binomial_null([0, 0], 100)
    assert 0.01 <= zero["null_p0"] < 0.05 and null_tail(0, 100, zero) == 1.0
    # R references cannot support a p-value below 1/(R + 1)
    assert null_tail(100, 100, tight) == pytest.approx(1 / 3)
    # and never below the rank p-value: a suspect matching no more than a reference is at best 2/(R + 1)
    assert null_tail(31, 100, tight) >= 2 / 3 - 1e-12 and null_tail(30, 100, tight) == 1.0


def test_extraction_never_touches_data(owner, mnist, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("c-examples extraction must not read a data set")

    monkeypatch.setattr(ms.data, "load", boom)
    monkeypatch.setattr(ms.data, "as_tensors", boom)
    key = CE(variant="c", n=5, steps=60, step_size=0.01).extract(owner, ms.data.InputSpec((1, 28, 28)))
    assert len(key.tensors["examples"]) >= 1
    import inspect

    assert "data" not in " ".join(inspect.signature(CE.extract).parameters)


def test_key_roundtrip_and_verdict_fields(keys, owner, tmp_path):
    key = keys["c"]
    path = key.save(tmp_path / "c.key")
    loaded = ms.Key.load(path) if hasattr(ms, "Key") else type(key).load(path)
    v = ms.verify(owner, loaded, max_queries=20)
    assert v.queries == 20 and v.details["n"] == 20 and not v.judged


def test_bad_inputs(owner, mnist, keys):
    with pytest.raises(ModelSealError, match="variant"):
        CE(variant="xx").extract(owner, mnist.meta)
    with pytest.raises(ModelSealError, match="n must"):
        CE(n=0).extract(owner, mnist.meta)
    with pytest.raises(ModelError, match="shape"):
        CE(n=2).extract(owner, ms.data.InputSpec((3, 32, 32)))
    other = ms.models.build("mlp", input_shape=(1, 28, 28), num_classes=5, seed=0)
    with pytest.raises(KeyMismatchError):
        ms.verify(other, keys["c"])
    wide = ms.models.build("mlp", input_shape=(3, 8, 8), num_classes=10, seed=0)
    with pytest.raises(KeyMismatchError):
        ms.verify(wide, keys["c"])
    with pytest.raises(ModelSealError):
        CharacteristicExamples().verify(owner, keys["c"], alpha=2.0)


# ---------------------------------------------------------------------- conferrable selection (digits)
# Pools are made once per session: extraction references (seeds 1000+; small MLPs trained 3 epochs), the
# verifier's references (5000+) and held-out independents (9000+), both converged MLPs (the default pool: a
# verifier pool must cover the suspect's accuracy, issue 37), all on the attacker split the owner never saw.
@pytest.fixture(scope="session")
def digits_pools(tmp_path_factory):
    from modelseal import references as R

    root = tmp_path_factory.mktemp("cex-pools")
    d = ms.data.load("digits", seed=0)
    make = {name: R.make_pool(d, r, root / name, archs="mlp", epochs=epochs, seed=seed, progress=False)
            for name, r, seed, epochs in [("extraction", 20, 1000, 3), ("verifier", 99, 5000, None),
                                          ("held", 50, 9000, None)]}
    return {name: (root / name, R.load_pool(root / name)) for name in make}


@pytest.fixture(scope="session")
def digits_owner():
    d = ms.data.load("digits", seed=0)
    owner = ms.models.build("mlp", d.meta, seed=0)
    ms.train.fit(owner, d.owner, epochs=30, seed=0, progress=False)
    return d, owner


@pytest.fixture(scope="session")
def selected_key(digits_owner, digits_pools):
    d, owner = digits_owner
    return CE(variant="ltrc", n=60, extraction_references=digits_pools["extraction"][0]).extract(owner, d.meta)


@pytest.mark.slow
def test_selection_cuts_transfer_on_digits(selected_key, digits_owner, digits_pools):
    d, owner = digits_owner
    plain = CE(variant="ltrc", n=60).extract(owner, d.meta)
    held = digits_pools["held"][1]
    t_sel, t_plain = _transfer(held, selected_key), _transfer(held, plain)
    p = selected_key.params
    assert p["extraction_references"] == 20 and len(p["extraction_reference_digests"]) == 20
    assert p["n"] >= 30 and match_rate(owner, selected_key) == 1.0
    # targets stay spread over the classes (at most ceil(n / C) per class)
    assert int(torch.bincount(selected_key.tensors["targets"]).max()) <= 6
    # measured (seed 0): held-out transfer 0.36 without selection, about 0.03 with it
    assert t_sel < t_plain / 3, (t_sel, t_plain)


@pytest.mark.slow
def test_pool_selection_owns_positives_at_alpha_001(selected_key, digits_owner, digits_pools):
    d, owner = digits_owner
    refs = digits_pools["verifier"][1]
    positives = {"owner": owner,
                 "ftal": ms.attacks.get("finetune")(mode="ftal", epochs=3).apply(owner, d.attacker),
                 "prune50": ms.attacks.get("prune")(amount=0.5).apply(owner)}
    for name, m in positives.items():
        v = ms.verify(m, selected_key, references=digits_pools["verifier"][0], alpha=0.01)
        assert v.owned and v.details["references"] == 99, (name, v.score, v.p_value)
        assert v.details["reference_transfer"] < 0.1
    # the held-out independents: the same test as verify, with the 99 reference counts computed once
    from modelseal.methods.characteristic import judge_counts

    n = selected_key.params["n"]
    counts = [round(match_rate(r, selected_key) * n) for r in refs]
    held = digits_pools["held"][1]
    p_values = [judge_counts(round(match_rate(m, selected_key) * n), n, counts, 0.01)["p_value"] for m in held]
    assert ms.verify(held[0], selected_key, references=refs, alpha=0.01).p_value == pytest.approx(p_values[0])
    assert [i for i, p in enumerate(p_values) if p <= 0.01] == []


def test_extraction_references_are_refused_as_verifier_references(digits_owner, tmp_path_factory):
    from modelseal import references as R

    d, owner = digits_owner
    folder = tmp_path_factory.mktemp("tiny-pool")
    R.make_pool(d, 3, folder, archs="mlp", epochs=1, seed=77, progress=False)
    key = CE(variant="c", n=5, max_rounds=2, max_transfer=0.5, extraction_references=str(folder)).extract(
        owner, d.meta)
    assert key.params["extraction_reference_digests"] == [R.model_digest(m) for m in R.load_pool(folder)]
    public = ms.methods.commit(key)
    assert public["params"]["extraction_reference_digests"] == key.params["extraction_reference_digests"]
    with pytest.raises(ModelSealError, match="extraction references"):
        ms.verify(owner, key, references=folder, alpha=0.3)
    with pytest.raises(ModelSealError, match="owner model itself"):
        CE(variant="c", n=5, extraction_references=[owner]).extract(owner, d.meta)
    with pytest.raises(ModelSealError, match="max_transfer"):
        CE(variant="c", n=5, max_transfer=1.5).extract(owner, d.meta)


def test_descent_runs_on_a_channels_last_copy_only_when_it_answers_the_same(owner, mnist):
    from modelseal.methods.characteristic import _fast_layout

    spec = ms.data.as_input_spec(mnist.meta)
    work = _fast_layout(owner, spec)
    assert work is not owner and next(owner.parameters()).requires_grad
    conv = [p for p in work.parameters() if p.dim() == 4]
    assert conv and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv)
    assert all(p.is_contiguous() for p in owner.parameters())  # the owner's own layout is left alone
    x = torch.rand(8, *spec.shape)
    with torch.no_grad():
        assert torch.allclose(work(x), owner(x), atol=1e-5)

    class Viewing(nn.Module):  # .view after a convolution fails on channels-last activations
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 28 * 28, 10)

        def forward(self, x):
            h = self.conv(x.reshape(-1, 1, 28, 28))
            return self.fc(h.view(len(h), -1))

    viewing = Viewing()
    assert _fast_layout(viewing, spec) is viewing
    mlp = ms.models.build("mlp", mnist.meta, seed=0)
    assert _fast_layout(mlp, spec) is mlp  # no convolution: nothing to gain
    key = CE(variant="c", n=3, steps=60, step_size=0.02).extract(viewing, spec)
    assert len(key.tensors["examples"]) >= 1
