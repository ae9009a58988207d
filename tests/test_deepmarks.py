import copy
import dataclasses

import numpy as np
import pytest
import torch

import modelseal as ms
from modelseal.errors import KeyMismatchError, ModelError, ModelSealError, WhiteBoxRequired
from modelseal.keys import Key

DeepMarks = ms.methods.get("deepmarks")


@pytest.fixture(scope="module")
def distributed(_owner_cnn, mnist):
    # One short fine-tune per user on half the owner split keeps 31 copies within ~40 s on the CPU.
    copies, key = DeepMarks(users=31, epochs=1, seed=0).distribute(
        _owner_cnn, mnist.owner.subset(1000, seed=1), progress=False)
    return copies, key


def average(models):
    out = copy.deepcopy(models[0])
    sds = [m.state_dict() for m in models]
    out.load_state_dict({k: torch.stack([sd[k].float() for sd in sds]).mean(0).to(sds[0][k].dtype)
                         for k in sds[0]})
    return out


def test_distribute_gives_one_copy_per_user_and_a_complete_key(distributed, _owner_cnn):
    copies, key = distributed
    assert len(copies) == 31 and all(c is not _owner_cnn for c in copies)
    assert key.method == "deepmarks" and key.params["k"] == 6 and key.params["layer"] == "classifier.1"
    assert tuple(key.tensors["codebook"].shape) == (31, 31)
    u = key.tensors["U"]
    assert torch.allclose(u.T @ u, torch.eye(31), atol=1e-5)


def test_every_copy_keeps_the_owner_accuracy_within_one_point(distributed, _owner_cnn, mnist):
    copies, _ = distributed
    base = ms.train.evaluate(_owner_cnn, mnist.test)
    accs = np.array([ms.train.evaluate(c, mnist.test) for c in copies])
    assert (accs >= base - 0.01).all(), (base, accs.min())


def test_each_single_copy_is_traced_to_exactly_its_user(distributed):
    copies, key = distributed
    for j, c in enumerate(copies):
        res = ms.trace(c, key)
        assert res.accused == [j] and res.owned
        assert res.details["best_user"] == j and res.details["single_p_value"] <= 1e-6
        assert res.details["p_values"][str(j)] <= res.alpha == 1e-6


@pytest.mark.parametrize("size", [2, 3, 4, 5])
def test_averaging_colluders_accuses_all_of_them_and_no_innocent(distributed, size):
    copies, key = distributed
    rng = np.random.default_rng(size)
    for _ in range(20):
        coal = sorted(rng.choice(31, size=size, replace=False).tolist())
        res = ms.trace(average([copies[j] for j in coal]), key)
        assert res.accused == coal, (coal, res.accused, res.details['fit'], res.p_value)


def test_independent_models_and_the_owner_accuse_nobody(distributed, independent_models, _owner_cnn):
    _, key = distributed
    cnns = [m for m in independent_models if "features.0" in dict(m.named_modules())]
    assert len(cnns) == 3
    for m in [*cnns, _owner_cnn]:
        res = ms.trace(m, key)
        assert res.accused == [] and not res.owned and res.p_value > res.alpha


def test_key_round_trips_through_a_file(distributed, tmp_path):
    copies, key = distributed
    key.save(tmp_path / "dm.seal")
    loaded = Key.load(tmp_path / "dm.seal", method="deepmarks")
    assert ms.trace(copies[7], loaded).accused == [7]
    d = ms.trace(copies[7], loaded).to_dict()
    assert d["accused"] == [7] and "7" in d["details"]["p_values"]


def test_key_for_another_architecture_is_refused(distributed, independent_models, mnist):
    _, key = distributed
    mlp = next(m for m in independent_models if "features.0" not in dict(m.named_modules()))
    with pytest.raises(KeyMismatchError, match="no layer 'classifier.1'"):
        ms.trace(mlp, key)
    narrow = ms.models.build("cnn", mnist.meta, seed=5, channels=(8, 16))
    with pytest.raises(KeyMismatchError, match="weight shape"):
        ms.trace(narrow, key)


def test_key_naming_a_missing_layer_is_refused(distributed):
    copies, key = distributed
    bad = Key("deepmarks", params={**key.params, "layer": "nope"}, tensors=key.tensors,
              signature=key.signature)
    with pytest.raises(KeyMismatchError, match="no layer 'nope'"):
        ms.trace(copies[0], bad)


def test_distribute_to_a_missing_layer_is_refused(owner_cnn, mnist):
    with pytest.raises(ModelError, match="no layer 'nope'"):
        DeepMarks(users=7, layer="nope").distribute(owner_cnn, mnist.owner)


def test_black_box_suspect_needs_white_box(distributed):
    _, key = distributed
    blackbox = ms.Suspect(lambda x: torch.zeros(len(x), 10), input_shape=(1, 28, 28))
    with pytest.raises(WhiteBoxRequired):
        ms.trace(blackbox, key)


def test_too_many_users_is_refused_before_training(owner_cnn, mnist):
    with pytest.raises(ModelSealError, match="at most 183"):
        DeepMarks(users=184).distribute(owner_cnn, mnist.owner)


@pytest.mark.parametrize("kw", [{"rows": 5}, {"gamma": 0.0}, {"epochs": 0}])
def test_bad_parameters_are_refused(owner_cnn, mnist, kw):
    with pytest.raises(ModelSealError):
        DeepMarks(users=7, **kw).distribute(owner_cnn, mnist.owner)


def test_same_seed_gives_the_same_secrets():
    a, b = DeepMarks(seed=3), dataclasses.replace(DeepMarks(), seed=3)
    xa, ua = a._secrets(7, 20, 7)
    xb, ub = b._secrets(7, 20, 7)
    assert torch.equal(xa, xb) and torch.equal(ua, ub)
