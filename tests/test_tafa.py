"""TAFA: data-free, task-agnostic fingerprints on a classifier, a regressor and a VAE decoder."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import modelseal as ms
from modelseal.errors import KeyMismatchError, ModelError, RegistryError, SuspectError
from modelseal.models.vae import VAE
from modelseal.train import train_vae

TAFA = ms.methods.get("tafa")


# ---------------------------------------------------------------------- attacks (local fallbacks)
def _prune(model: nn.Module, fraction: float = 0.5) -> nn.Module:
    try:
        return ms.attacks.get("prune")(amount=fraction).apply(model)
    except (RegistryError, TypeError):
        pass
    m = copy.deepcopy(model)
    ws = [mod.weight for mod in m.modules() if isinstance(mod, (nn.Linear, nn.Conv2d))]
    thr = torch.cat([w.detach().abs().flatten() for w in ws]).quantile(fraction)
    with torch.no_grad():
        for w in ws:
            w.mul_((w.abs() > thr).to(w.dtype))
    return m


def _quantize(model: nn.Module, bits: int = 8) -> nn.Module:
    try:
        return ms.attacks.get("quantize")(bits=bits).apply(model)
    except (RegistryError, TypeError):
        pass
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            scale = p.abs().max() / (2 ** (bits - 1) - 1)
            if scale > 0:
                p.copy_(torch.round(p / scale) * scale)
    return m


def _ftal(model: nn.Module, data, epochs: int = 3, lr: float = 1e-3) -> nn.Module:
    try:
        return ms.attacks.get("finetune")(mode="ftal", epochs=epochs, lr=lr).apply(model, data)
    except (RegistryError, TypeError):
        pass
    m = copy.deepcopy(model)
    ms.train.fit(m, data, epochs=epochs, lr=lr, seed=7, progress=False)
    return m


def _assert_separates(key, positives: dict, negatives: list) -> None:
    for name, model in positives.items():
        v = ms.verify(ms.Suspect(model), key)
        assert v.owned, f"{name}: {v.summary()}"
    for i, model in enumerate(negatives):
        v = ms.verify(ms.Suspect(model), key)
        assert not v.owned, f"independent #{i}: {v.summary()}"
        assert v.p_value > 1e-3, f"independent #{i}: {v.summary()}"


def _no_data(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("tafa extraction touched the data module")

    monkeypatch.setattr(ms.data, "load", boom)
    monkeypatch.setattr(ms.data, "as_tensors", boom)


# ---------------------------------------------------------------------- classification (mnist5k CNN)
@pytest.fixture(scope="module")
def cnn_case(_owner_cnn, _independent, mnist):
    owner = copy.deepcopy(_owner_cnn)
    key = TAFA(n=150, seed=0).extract(owner, mnist.meta)
    negatives = [copy.deepcopy(m) for m in _independent]  # 3 CNN + 2 MLP seeds, attacker split
    for seed in (11, 12):
        m = ms.models.build("cnn", mnist.meta, seed=300 + seed)  # cheap: 2 epochs on half the split
        ms.train.fit(m, mnist.attacker.subset(1000, seed=seed), epochs=2, seed=300 + seed, progress=False)
        negatives.append(m)
    return owner, key, negatives


@pytest.mark.slow
def test_cnn_owned_after_attacks_and_not_for_independent(cnn_case, mnist):
    owner, key, negatives = cnn_case
    # FTAL at Adam lr 3e-4; at lr 1e-3 (the from-scratch rate) the CNN's boundaries on uniform-noise
    # inputs move past the probe steps and the fingerprint is lost (see the benchmark and the docstring)
    positives = {"self": owner, "ftal": _ftal(owner, mnist.attacker, lr=3e-4), "prune50": _prune(owner),
                 "int8": _quantize(owner)}
    assert sum(m.__class__.__name__ == "CNN" for m in negatives) >= 5
    _assert_separates(key, positives, negatives)


def test_cnn_key_shape_and_queries(cnn_case):
    owner, key, _ = cnn_case
    assert key.method == "tafa"
    assert tuple(key.tensors["inputs"].shape) == (150 * 5, 1, 28, 28)
    assert tuple(key.tensors["outputs"].shape) == (150 * 5, 10)
    assert key.signature == {"input_shape": [1, 28, 28], "output_size": 10}
    x = key.tensors["inputs"]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    v = ms.verify(ms.Suspect(owner), key)
    assert v.queries == 750 and v.owned and v.score > 0.99


# ---------------------------------------------------------------------- regression (diabetes MLP)
@pytest.fixture(scope="module")
def reg_case():
    d = ms.data.load("diabetes", seed=0)

    def train(data, seed):
        m = ms.models.build("mlp", d.meta, seed=seed, hidden=(64, 64))
        ms.train.fit(m, data, epochs=50, seed=seed, progress=False)
        return m

    owner = train(d.owner, 0)
    negatives = [train(d.attacker, 100 + s) for s in range(3)] + [train(d.owner, 200 + s) for s in range(2)]
    return d, owner, negatives


def test_regression_fingerprint(reg_case, monkeypatch):
    d, owner, negatives = reg_case
    assert ms.train.evaluate(owner, d.test) > 0.2
    with monkeypatch.context() as mp:
        _no_data(mp)
        key = TAFA(seed=1).extract(owner, ms.data.InputSpec((10,), (0.0, 1.0)))
    assert key.signature["output_size"] == 1
    positives = {"self": owner, "ftal": _ftal(owner, d.attacker), "prune50": _prune(owner),
                 "int8": _quantize(owner)}
    _assert_separates(key, positives, negatives)


# ---------------------------------------------------------------------- generative (VAE decoder on digits)
@pytest.fixture(scope="module")
def vae_case():
    d = ms.data.load("digits", seed=0)

    def train(data, seed, epochs=30):
        vae = VAE((1, 8, 8), latent=8, seed=seed)
        train_vae(vae, data, epochs=epochs, seed=seed)
        return vae

    owner = train(d.owner, 0)
    negatives = [train(d.attacker, 100 + s).decoder for s in range(3)]
    negatives += [train(d.owner, 200 + s).decoder for s in range(2)]
    tuned = copy.deepcopy(owner)
    train_vae(tuned, d.attacker, epochs=3, seed=7)  # FTAL: every layer, the attacker's data
    return d, owner, tuned.decoder, negatives


def test_vae_decoder_fingerprint(vae_case, monkeypatch):
    d, vae, tuned, negatives = vae_case
    decoder = vae.decoder
    with monkeypatch.context() as mp:
        _no_data(mp)
        key = TAFA(seed=2).extract(decoder, ms.data.InputSpec((8,), (-3.0, 3.0)))
    assert key.signature == {"input_shape": [8], "output_size": 64}
    assert tuple(key.tensors["outputs"].shape[1:]) == (64,)
    positives = {"self": decoder, "ftal": tuned, "prune50": _prune(decoder), "int8": _quantize(decoder)}
    _assert_separates(key, positives, negatives)


def test_vae_reconstructs(vae_case):
    d, vae, _, _ = vae_case
    x = d.test.x[:64]
    vae.eval()
    with torch.no_grad():
        err = ((vae(x) - x) ** 2).mean()
    assert float(err) < float(((x - x.mean(0)) ** 2).mean())  # better than the mean image


# ---------------------------------------------------------------------- contract
def test_extraction_uses_no_data_and_is_deterministic(reg_case, monkeypatch):
    _, owner, _ = reg_case
    _no_data(monkeypatch)
    spec = ms.data.InputSpec((10,), (0.0, 1.0))
    k1 = TAFA(n=20, seed=3).extract(owner, spec)
    k2 = TAFA(n=20, seed=3).extract(owner, spec)
    k3 = TAFA(n=20, seed=4).extract(owner, spec)
    assert k1.digest() == k2.digest() != k3.digest()


def test_descent_runs_no_layer_past_the_chosen_relu():
    """The boundary descent stops each forward at the chosen ReLU: the output layer only ever runs without
    gradients (the owner's outputs on the finished key), so no graph past the target is kept."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 3))
    with_grad = []
    model[5].register_forward_hook(lambda _m, _i, _o: with_grad.append(torch.is_grad_enabled()))
    TAFA(n=20, seed=0).extract(model, ms.data.InputSpec((10,), (0.0, 1.0)))
    assert with_grad and not any(with_grad)


def test_descent_batches_do_not_change_the_key():
    """Descending in batches of 5 points (as a large network's memory cap would) finds the same key as one
    batch of all points."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 3))
    spec = ms.data.InputSpec((10,), (0.0, 1.0))
    small, whole = TAFA(n=30, seed=1, batch_size=5).extract(model, spec), TAFA(n=30, seed=1).extract(model, spec)
    assert torch.allclose(small.tensors["inputs"], whole.tensors["inputs"], atol=1e-5)
    assert torch.equal(small.tensors["layers"], whole.tensors["layers"])


def test_key_roundtrip(reg_case, tmp_path):
    _, owner, _ = reg_case
    key = TAFA(n=30).extract(owner, ms.data.InputSpec((10,), (0.0, 1.0)))
    path = key.save(tmp_path / "tafa.seal")
    loaded = ms.Key.load(path, method="tafa")
    v = ms.verify(owner, loaded)
    assert v.owned and v.queries == 150 and v.p_value <= v.alpha


def test_model_without_relu_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 1))
    with pytest.raises(ModelError, match="ReLU"):
        TAFA(n=10).extract(model, ms.data.InputSpec((10,), (0.0, 1.0)))


def test_label_only_suspect_is_refused(reg_case):
    _, owner, _ = reg_case
    key = TAFA(n=10).extract(owner, ms.data.InputSpec((10,), (0.0, 1.0)))

    class LabelsOnly:
        input_shape = (10,)
        label_only = True

        def __call__(self, x):
            return torch.zeros(len(x), dtype=torch.long)

    with pytest.raises(SuspectError, match="raw outputs"):
        ms.verify(ms.Suspect(LabelsOnly()), key)


def test_key_for_another_model_is_refused(reg_case):
    _, owner, _ = reg_case
    key = TAFA(n=10).extract(owner, ms.data.InputSpec((10,), (0.0, 1.0)))
    other_out = ms.models.build("mlp", input_shape=(10,), num_classes=3, seed=0)
    other_in = ms.models.build("mlp", input_shape=(12,), num_classes=1, seed=0)
    with pytest.raises(KeyMismatchError):
        ms.verify(other_out, key)
    with pytest.raises((KeyMismatchError, SuspectError)):
        ms.verify(other_in, key)


def test_bad_parameters_are_refused(reg_case):
    _, owner, _ = reg_case
    with pytest.raises(ms.ModelSealError, match="n must be an integer"):
        TAFA(n=1).extract(owner, ms.data.InputSpec((10,), (0.0, 1.0)))


def test_pvalue_is_valid_under_the_null():
    # a suspect whose outputs are unrelated to the owner's: p-values roughly uniform
    from modelseal.methods.tafa import kink_statistic

    gen = torch.Generator().manual_seed(0)
    ps = []
    for _ in range(200):
        owner = torch.randn(5 * 60, 3, generator=gen)
        other = torch.randn(5 * 60, 3, generator=gen)
        ps.append(kink_statistic(owner.double(), other.double())["p_value"])
    ps = torch.tensor(ps)
    assert 0.03 <= float((ps <= 0.1).float().mean()) <= 0.18
    assert float(ps.min()) > 1e-4


# ---------------------------------------------------------------------- what an API returns (digits)
class API(nn.Module):
    """A served model: the network behind an output transform, as an API returns it."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model, kind
        self.gen = torch.Generator().manual_seed(5)

    def forward(self, x):
        z = self.model(x)
        if self.kind == "softmax":
            return z.softmax(1)
        if self.kind == "softmax-T3":
            return (z / 3).softmax(1)
        if self.kind == "round3":
            return torch.round(z.softmax(1) * 1000) / 1000
        if self.kind == "noise0.05":
            return z + 0.05 * torch.randn(z.shape, generator=self.gen)
        if self.kind == "one-hot":
            return nn.functional.one_hot(z.argmax(1), z.shape[1]).float()
        return z


def _digits_model(d, arch: str, data, build_seed: int, fit_seed: int, epochs: int = 10) -> nn.Module:
    m = ms.models.build(arch, d.meta, seed=build_seed)
    ms.train.fit(m, data, epochs=epochs, seed=fit_seed, progress=False)
    return m


@pytest.fixture(scope="module")
def api_case():
    d = ms.data.load("digits", seed=0)
    owner = _digits_model(d, "mlp", d.owner, 0, 0)
    tuned = _ftal(owner, d.attacker)  # FTAL, 3 epochs at the from-scratch rate
    negatives = {"mlp": _digits_model(d, "mlp", d.attacker, 100, 100),
                 "cnn": _digits_model(d, "cnn", d.attacker, 101, 101)}
    key = TAFA(n=300, seed=0).extract(owner, d.meta)
    return d, owner, tuned, negatives, key


# (transform, verifier parameters, output scale detected). Logit noise sigma 0.05 needs its queries
# repeated: 64 x 1,500 = 96,000 queries (one query each: owner score 0.12, p 0.1).
API_CASES = [("softmax", {}, "probabilities -> log"), ("softmax-T3", {}, "probabilities -> log"),
             ("round3", {}, "probabilities rounded to 1e-3"),
             pytest.param("noise0.05", {"repeats": 64}, "raw", marks=pytest.mark.slow)]


@pytest.mark.parametrize(("kind", "params", "scale"), API_CASES, ids=["softmax", "softmax-T3", "round3", "noise0.05"])
def test_owned_behind_api_transforms(api_case, kind, params, scale):
    _, owner, tuned, negatives, key = api_case
    for name, model in {"owner": owner, "fine-tuned": tuned}.items():
        v = ms.verify(ms.Suspect(API(model, kind)), key, **params)
        assert v.owned, f"{kind} {name}: {v.summary()}"
        assert v.details["output_scale"].startswith(scale)
    for name, model in negatives.items():
        v = ms.verify(ms.Suspect(API(model, kind)), key, **params)
        assert v.judged and not v.owned and v.p_value > 1e-3, f"{kind} independent {name}: {v.summary()}"


def test_one_hot_outputs_are_not_judged(api_case):
    _, owner, _, _, key = api_case
    v = ms.verify(ms.Suspect(API(owner, "one-hot")), key)
    assert not v.judged and not v.owned
    assert "the suspect returns labels" in v.details["not_judged"]
    assert v.details["output_scale"] == "one-hot labels"


def test_recheck_applies_the_same_transform(api_case):
    _, owner, _, _, key = api_case
    v = ms.verify(ms.Suspect(API(owner, "round3")), key)
    again = TAFA.recheck({"outputs": key.tensors["outputs"]}, v.transcript, {})
    assert again["p_value"] == pytest.approx(v.p_value, rel=1e-9, abs=1e-300) and again["owned"]


# ---------------------------------------------------------------------- a shared initialisation
@pytest.mark.slow
def test_same_init_is_lineage_and_train_draws_a_fresh_seed(tmp_path):
    """Independents trained from the owner's initial weights share its boundary structure (measured on
    digits: MLP 0.13-0.15, CNN 0.11-0.15 against margin 0.1), a lineage TAFA detects; so `modelseal
    train` draws a fresh initialisation by default, recorded in the model file, and an owner and a model
    trained on the attacker split with the defaults are not accused."""
    from typer.testing import CliRunner

    from modelseal.cli import app

    runner = CliRunner()
    paths = {}
    for split, arch in (("owner", "mlp"), ("attacker", "mlp"), ("attacker", "cnn")):
        p = tmp_path / f"{split}-{arch}.safetensors"
        r = runner.invoke(app, ["train", "--data", "digits", "--arch", arch, "--epochs", "10", "--split", split,
                                "--out", str(p), "--json"])
        assert r.exit_code == 0, r.output
        paths[(split, arch)] = p
    models = {k: ms.models.load_model(p) for k, p in paths.items()}
    seeds = [m.modelseal_extra["seed"] for m in models.values()]
    assert len(set(seeds)) == 3 and all(m.modelseal_extra["seed_source"] == "fresh" for m in models.values())
    owner = models[("owner", "mlp")]
    key = TAFA(n=300, seed=0).extract(owner, ms.data.load("digits", seed=0).meta)
    assert ms.verify(owner, key).owned
    for k in (("attacker", "mlp"), ("attacker", "cnn")):
        v = ms.verify(models[k], key)
        assert v.judged and not v.owned, f"{k}: {v.summary()}"


# ---------------------------------------------------------------------- structured pruning (torch-pruning)
@pytest.mark.slow
def test_structured_pruning_measured_limit():
    """The measured limit of issue 25 item 2 (the paper's "50 % pruned + fine-tuned is detected" is not
    reached): torch-pruning removes 20 % / 50 % of the hidden neurons of a digits MLP (L2 magnitude), then 3
    epochs of FTAL on the attacker split. Pruning alone keeps the fingerprint (50 %: score 0.39, p 9e-39);
    20 % + FT is owned (p 1e-33); 50 % + FT is not (score 0.11, p 0.33, accuracy 0.942 vs the owner's
    0.920), and scores no higher than models trained from the owner's initialisation on other data
    (0.13-0.15), which is why no margin can own it without accusing them."""
    tp = pytest.importorskip("torch_pruning")
    d = ms.data.load("digits", seed=0)
    owner = _digits_model(d, "mlp", d.owner, 0, 0)
    key = TAFA(n=300, seed=0).extract(owner, d.meta)

    def prune(ratio: float) -> nn.Module:
        m = copy.deepcopy(owner).eval()
        last = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1]
        tp.pruner.MagnitudePruner(m, torch.rand(1, *d.meta.input_shape),
                                  importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                                  ignored_layers=[last]).step()
        return m

    p50 = prune(0.5)
    assert p50.net[1].out_features == 128  # 256 -> 128: structurally pruned
    assert ms.verify(p50, key).owned  # pruning alone does not remove it
    assert ms.verify(_ftal(prune(0.2), d.attacker), key).owned
    v = ms.verify(_ftal(p50, d.attacker), key)
    assert v.judged and not v.owned and v.score < 0.2
