"""Trigger-set watermark (Adi et al. 2018): embedding, commitments, sequential verification."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import modelseal as ms
from modelseal.commitment import load as load_commitment
from modelseal.commitment import save as save_commitment
from modelseal.errors import DataError, KeyFormatError, KeyIntegrityError, KeyMismatchError, ModelSealError
from modelseal.keys import Key
from modelseal.methods import commit as commitment
from modelseal.methods import open_commitment as check_commitment
from modelseal.methods.trigger_set import make_triggers, trigger_accuracy
from modelseal.stats import min_queries, sequential_test

TS = ms.methods.get("trigger-set")


@pytest.fixture(scope="module")
def wm(mnist, _owner_cnn):
    marked, key = TS(n=100).embed(_owner_cnn, mnist.owner, progress=False)
    return _owner_cnn, marked, key


class LabelOnly:
    """A black-box endpoint that answers labels only (e.g. a remote API)."""

    label_only = True

    def __init__(self, fn, input_shape=(1, 28, 28)):
        self.fn, self.input_shape = fn, input_shape

    def __call__(self, x):
        return self.fn(x)


def _tiny_key(mnist, seed=0, **kw):
    model = ms.models.build("mlp", mnist.meta, seed=0, hidden=(16,))
    return TS(n=20, seed=seed, epochs=1, **kw).embed(model, mnist.owner.subset(128), progress=False)


# ------------------------------------------------------------------------------------------ embedding
def test_embed_keeps_accuracy_and_learns_every_trigger(wm, mnist):
    owner, marked, key = wm
    before, after = ms.train.evaluate(owner, mnist.test), ms.train.evaluate(marked, mnist.test)
    assert after >= before - 0.01, (before, after)
    images, labels = key.tensors["images"], key.tensors["labels"]
    assert trigger_accuracy(marked, images, labels) == 1.0
    assert trigger_accuracy(owner, images, labels) < 0.3  # the owner model did not know them
    assert images.shape == (100, 1, 28, 28) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= set(range(10))
    assert key.tensors["nonces"].shape == (100, 32) and key.tensors["nonces"].dtype == torch.uint8
    assert key.signature == {"input_shape": [1, 28, 28], "output_size": 10}


def test_marked_model_owned_in_few_queries(wm):
    _, marked, key = wm
    v = ms.verify(marked, key)
    assert v.owned and v.p_value <= 1e-6 and v.alpha == 1e-6
    assert min_queries(0.1, 1e-6) == 6 <= v.queries <= 20
    d = v.details
    assert d["queried"] == v.queries and d["matches"] <= d["queried"] and d["stop"] == "owned"
    assert d["null_rate"] == pytest.approx(0.1) and d["looks"] >= 1 and d["p_nominal"] <= v.p_value
    assert v.to_dict()["owned"] is True


def test_label_only_suspect_is_judged(wm):
    _, marked, key = wm
    sus = ms.Suspect(LabelOnly(lambda x: marked(x).argmax(1).float()))
    v = ms.verify(sus, key, batch=2)
    assert v.owned and v.queries <= 10 and sus.queries == v.queries


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ftll", "ftal"])
def test_owned_after_fine_tuning(wm, mnist, mode):
    _, marked, key = wm
    pirated = ms.attacks.get("finetune")(mode=mode, epochs=5).apply(marked, mnist.attacker)
    v = ms.verify(pirated, key)
    assert v.owned and v.p_value <= 1e-6, v.details


def test_independent_models_not_owned(wm, independent_models):
    _, _, key = wm
    for model in independent_models:
        v = ms.verify(model, key)
        assert not v.owned and v.p_value > 1e-6, v.details
        assert v.details["stop"] in ("futile", "budget")


def test_query_budget(wm):
    _, marked, key = wm
    v = ms.verify(marked, key, max_queries=5)  # 5 of 5 matches cannot reach 1e-6 at 10 classes
    assert not v.owned and v.queries == 0 and v.details["stop"].startswith("unreachable")
    v = ms.verify(ms.Suspect(marked, max_queries=40), key, batch=10)
    assert v.owned and v.queries <= 20


# ------------------------------------------------------------------------------------------ commitments
def test_commitment_round_trip_and_verify(wm, tmp_path):
    _, marked, key = wm
    public = commitment(key)
    assert public["method"] == "trigger-set" and len(public["commitments"]) == 100
    assert all(len(c) == 64 for c in public["commitments"]) and public["created"] == key.created
    path = save_commitment(public, tmp_path / "pub.json")
    with pytest.raises(ms.errors.OutputExistsError):
        save_commitment(public, path)
    loaded = load_commitment(path)
    assert loaded == json.loads(json.dumps(public))
    check_commitment(key, loaded)
    v = ms.verify(marked, key, commitment=path)
    assert v.owned and v.details["commitment_checked"]
    # The commitments hide the triggers: no image, label or seed appears in the public file, only digests.
    text = path.read_text()
    assert len(text) < 20_000 and "seed" not in loaded["params"]
    assert str(key.tensors["labels"].tolist()[:10])[1:-1] not in text


@pytest.mark.parametrize("what, index", [("images", 7), ("labels", 42), ("nonces", 99)])
def test_tampered_key_is_caught_naming_the_index(wm, what, index):
    _, marked, key = wm
    public = commitment(key)
    tensors = {k: v.clone() for k, v in key.tensors.items()}
    if what == "labels":
        tensors["labels"][index] = (tensors["labels"][index] + 1) % 10
    elif what == "images":
        tensors["images"][index, 0, 3, 3] += 0.01
    else:
        tensors["nonces"][index, 0] ^= 1
    forged = Key(key.method, params=key.params, tensors=tensors, signature=key.signature, created=key.created)
    with pytest.raises(KeyIntegrityError, match=f"trigger {index} "):
        check_commitment(forged, public)
    with pytest.raises(KeyIntegrityError, match=f"trigger {index} "):
        ms.verify(marked, forged, commitment=public)


def test_commitment_for_another_key_refused(wm, mnist):
    _, _, key = wm
    _, other = _tiny_key(mnist)
    with pytest.raises(KeyIntegrityError, match="20 triggers but 100"):
        check_commitment(other, commitment(key))


@pytest.mark.parametrize("content, msg", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"type": "something"}', "'type'"),
    ('{"type": "modelseal-commitment", "format": 99}', "newer"),
    ('{"type": "modelseal-commitment", "format": 3, "method": "trigger-set", "created": "x", "params": {}, '
     '"params_digest": "x", "tensors": {}, "signature": {"input_shape": [1], "output_size": 2}, '
     '"commitments": ["abc"]}', "SHA-256"),
    ('{"type": "modelseal-commitment", "format": 3, "method": "trigger-set", "created": "x", "params": {}, '
     '"params_digest": "x", "tensors": {}, "signature": {"input_shape": [1]}, "commitments": []}', "commitments"),
    ('{"type": "modelseal-commitment", "format": 1, "method": "trigger-set", "created": "x", '
     '"signature": {"input_shape": [1], "output_size": 2}, "commitments": ["' + "a" * 64 + '"]}', "binds less"),
])
def test_bad_commitment_file(tmp_path, content, msg):
    p = tmp_path / "c.json"
    p.write_text(content)
    with pytest.raises(KeyFormatError, match=msg):
        load_commitment(p)


def test_missing_commitment_file(tmp_path):
    with pytest.raises(KeyFormatError, match="does not exist"):
        load_commitment(tmp_path / "nope.json")


# ------------------------------------------------------------------------------------------ key checks
def test_key_for_another_model_shape_refused(wm, mnist):
    _, _, key = wm
    digits_like = ms.models.build("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0)
    with pytest.raises(KeyMismatchError, match="input shape"):
        ms.verify(digits_like, key)
    five_class = ms.models.build("cnn", mnist.meta, num_classes=5, seed=0)
    with pytest.raises(KeyMismatchError, match="outputs"):
        ms.verify(five_class, key)


def test_same_seed_same_key(mnist):
    _, a = _tiny_key(mnist, seed=3)
    _, b = _tiny_key(mnist, seed=3)
    _, c = _tiny_key(mnist, seed=4)
    assert a.digest() == b.digest() != c.digest()
    assert commitment(a)["commitments"] == commitment(b)["commitments"]
    assert not torch.equal(a.tensors["nonces"], c.tensors["nonces"])


def test_key_survives_save_and_load(wm, tmp_path):
    _, marked, key = wm
    key.save(tmp_path / "k.seal")
    loaded = Key.load(tmp_path / "k.seal", method="trigger-set")
    assert loaded.digest() == key.digest()
    check_commitment(loaded, commitment(key))


def test_triggers_match_shape_and_bounds():
    colour = make_triggers(8, (3, 16, 20), (-1.0, 2.0), seed=0)
    assert colour.shape == (8, 3, 16, 20) and colour.min() >= -1.0 and colour.max() <= 2.0
    assert not torch.allclose(colour[:, 0], colour[:, 1])  # colour, not grey
    flat = make_triggers(4, (30,), (0.0, 1.0), seed=0)
    assert flat.shape == (4, 30)
    assert torch.equal(make_triggers(4, (1, 8, 8), (0, 1), 5), make_triggers(4, (1, 8, 8), (0, 1), 5))


def test_image_folder_triggers(mnist, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    model = ms.models.build("mlp", mnist.meta, seed=0, hidden=(16,))
    small = mnist.owner.subset(64)
    _, key = TS(n=5, epochs=1, image_folder=str(tmp_path)).embed(model, small, progress=False)
    assert key.tensors["images"].shape == (5, 1, 28, 28) and key.params["source"] == "folder"
    with pytest.raises(DataError, match="n=6"):
        TS(n=10, image_folder=str(tmp_path)).embed(model, mnist.owner.subset(64), progress=False)
    with pytest.raises(DataError, match="does not exist"):
        TS(n=2, image_folder=str(tmp_path / "missing")).embed(model, mnist.owner.subset(64), progress=False)


def test_scratch_mode_reinitialises(mnist):
    model = ms.models.build("mlp", mnist.meta, seed=0, hidden=(16,))
    marked, key = TS(n=10, mode="scratch", epochs=1).embed(model, mnist.owner.subset(64), progress=False)
    assert key.params["mode"] == "scratch"
    assert not torch.equal(next(iter(marked.parameters())), next(iter(model.parameters())))


# ------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("kw, msg", [
    (dict(n=0), "n must be an integer in \\[1, 100000\\]"),
    (dict(mode="fancy"), "unknown mode .fancy.; use one of pretrained, scratch"),
    (dict(k_per_batch=0), "k_per_batch"),
    (dict(lr=-1.0), "lr"),
])
def test_bad_parameters(mnist, kw, msg):
    model = ms.models.build("mlp", mnist.meta, seed=0, hidden=(16,))
    with pytest.raises(ModelSealError, match=msg):
        TS(**kw).embed(model, mnist.owner.subset(32), progress=False)


def test_bad_verify_arguments(wm):
    _, marked, key = wm
    with pytest.raises(ModelSealError, match="alpha"):
        ms.verify(marked, key, alpha=0.0)
    with pytest.raises(ModelSealError, match="max_queries"):
        ms.verify(marked, key, max_queries=0)
    broken = Key(key.method, params=key.params, tensors={"images": key.tensors["images"]},
                 signature=key.signature)
    with pytest.raises(KeyFormatError, match="lacks (the )?tensor"):
        ms.verify(marked, broken)


def test_regression_model_refused():
    data = ms.data.load("diabetes")
    model = ms.models.build("mlp", data.meta, seed=0, hidden=(8,))
    with pytest.raises(ModelSealError, match="classifiers"):
        TS(n=5).embed(model, data.owner, progress=False)


# ------------------------------------------------------------------------------------------ statistics
def _simulate(trials, alpha, batch, budget=100, p0=0.1, seed=0):
    rng = np.random.default_rng(seed)
    owned = 0
    for _ in range(trials):
        hits = rng.random(budget) < p0
        owned += sequential_test(lambda lo, hi, h=hits: h[lo:hi], budget, p0, alpha, batch)["owned"]
    return owned / trials


@pytest.mark.parametrize("batch", [5, 1])
def test_sequential_false_positive_rate_at_most_alpha(batch):
    alpha, trials = 0.05, 4000
    rate = _simulate(trials, alpha, batch)
    se = np.sqrt(alpha * (1 - alpha) / trials)
    assert rate <= alpha + 3 * se, rate
    # The check is sensitive: testing every look at the nominal level would accuse far more often.
    rng = np.random.default_rng(1)
    from scipy.stats import binom

    naive = 0
    for _ in range(trials):
        s = np.cumsum(rng.random(100) < 0.1)[batch - 1::batch]
        n = np.arange(batch, 101, batch)
        naive += bool((binom.sf(s - 1, n, 0.1) <= alpha).any())
    assert naive / trials > 1.5 * alpha


def test_random_labellers_through_verify(wm):
    _, _, key = wm
    rng = torch.Generator().manual_seed(0)
    owned = 0
    for _ in range(100):
        sus = ms.Suspect(LabelOnly(lambda x: torch.randint(0, 10, (len(x),), generator=rng).float()))
        owned += ms.verify(sus, key, alpha=0.05).owned
    assert owned / 100 <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 100)


def test_intact_watermark_query_counts():
    def all_match(lo, hi):
        return np.ones(hi - lo, dtype=bool)

    assert sequential_test(all_match, 100, 0.1, 1e-6, 5)["queried"] == 10
    assert sequential_test(all_match, 100, 0.1, 1e-6, 10)["queried"] == 10
    assert sequential_test(all_match, 100, 0.1, 1e-6, 1)["queried"] <= 8
    assert sequential_test(all_match, 100, 0.1, 1e-6, 2)["queried"] <= 8
    res = sequential_test(lambda lo, hi: np.zeros(hi - lo, dtype=bool), 100, 0.1, 1e-6, 5)
    assert not res["owned"] and res["stop"] == "futile" and res["queried"] < 100
