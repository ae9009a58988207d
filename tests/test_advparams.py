"""AdvParams: a few in-range weight changes wreck the model; the key restores it bit-for-bit, and only it."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import modelseal as ms
from modelseal.data import TensorData
from modelseal.errors import (
    DataError,
    KeyFormatError,
    KeyIntegrityError,
    KeyMismatchError,
    ModelError,
    ModelSealError,
    WeakProtection,
)
from modelseal.keys import Key
from modelseal.methods.advparams import AdvParams, state_digest


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def locked_pair(_owner_cnn, mnist):
    owner = copy.deepcopy(_owner_cnn)
    before = _state(owner)
    locked, key = ms.methods.get("advparams")().lock(owner, mnist.owner)
    return owner, before, locked, key


def test_lock_breaks_accuracy_with_few_params(locked_pair, mnist):
    owner, _, locked, key = locked_pair
    assert ms.train.evaluate(owner, mnist.test) > 0.85
    changed = sum(int((a != b).sum()) for a, b in zip(owner.state_dict().values(),
                                                      locked.state_dict().values(), strict=True))
    # Batched passes move weights chosen from one gradient each (the old one-weight-a-pass greedy changed <= 50
    # here at 5-50x the cost): the pass that reaches the target is trimmed, so the change stays under 0.1 %.
    assert 1 <= changed <= 0.001 * key.params["total_params"]
    assert key.params["passes"] <= 3
    assert changed == key.params["changed"]
    assert key.params["target_reached"] is True
    assert ms.train.evaluate(locked, mnist.test) <= 0.20


def test_input_model_not_mutated(locked_pair):
    owner, before, locked, _ = locked_pair
    assert _equal(_state(owner), before)
    assert locked is not owner


def test_locked_values_inside_original_layer_range(locked_pair):
    owner, _, locked, key = locked_pair
    sd_o, sd_l = owner.state_dict(), locked.state_dict()
    for name in sd_o:
        a, b = sd_o[name], sd_l[name]
        if torch.equal(a, b):
            continue
        assert name in key.params["tensors"]
        assert float(b.min()) >= float(a.min()) and float(b.max()) <= float(a.max())


def test_unlock_is_bit_exact(locked_pair):
    owner, _, locked, key = locked_pair
    locked_before = _state(locked)
    restored = ms.methods.get("advparams")().unlock(locked, key)
    assert _equal(_state(restored), _state(owner))
    assert _equal(_state(locked), locked_before)  # unlock leaves the locked model alone
    assert restored is not locked


def test_top_level_unlock_and_key_roundtrip(locked_pair, tmp_path):
    owner, _, locked, key = locked_pair
    path = key.save(tmp_path / "lock.seal")
    loaded = Key.load(path, method="advparams")
    assert loaded.digest() == key.digest()
    restored = ms.unlock(locked, loaded)
    assert _equal(_state(restored), _state(owner))
    restored2 = ms.unlock(locked, str(path))
    assert state_digest(restored2) == key.params["original_digest"]


def test_wrong_key_refused(locked_pair, mnist):
    owner, _, locked, key = locked_pair
    other = ms.models.build("cnn", mnist.meta, seed=5)  # another model of the same architecture
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, other_key = AdvParams(max_params=3, target_accuracy=0.0, batch_size=64).lock(other, mnist.owner)
        _, key2 = AdvParams(max_params=3, target_accuracy=0.0, batch_size=64, seed=7).lock(owner, mnist.owner)
    with pytest.raises(KeyMismatchError, match="another model"):
        ms.unlock(locked, other_key)
    # A key from the same owner made with another seed locks different weights: refused too.
    with pytest.raises(KeyMismatchError):
        ms.unlock(locked, key2)
    # The locked model modified after locking (e.g. fine-tuned) is refused as well.
    tweaked = copy.deepcopy(locked)
    with torch.no_grad():
        next(tweaked.parameters()).view(-1)[0] += 1e-3
    with pytest.raises(KeyMismatchError):
        ms.unlock(tweaked, key)


def test_tampered_key_refused(locked_pair, tmp_path):
    _, _, locked, key = locked_pair
    # Tampered file: the key's own digest catches it on load.
    bad_tensors = dict(key.tensors)
    bad_tensors["original.0"] = bad_tensors["original.0"].clone()
    bad_tensors["original.0"][0] += 0.5
    path = key.save(tmp_path / "good.seal")
    raw = bytearray(path.read_bytes())
    forged = Key(method=key.method, params=key.params, tensors=bad_tensors, signature=key.signature,
                 created=key.created).to_bytes()
    # Splice the forged tensors under the genuine header digest: same length, different values.
    assert len(forged) == len(raw)
    start = len(raw) - sum(t.numel() * t.element_size() for t in key.tensors.values())
    raw[start:] = forged[start:]
    (tmp_path / "bad.seal").write_bytes(bytes(raw))
    with pytest.raises(KeyIntegrityError):
        Key.load(tmp_path / "bad.seal")
    # A re-digested forgery (values changed in memory) is caught by the original-state digest.
    with pytest.raises(KeyIntegrityError, match="altered"):
        ms.unlock(locked, forged_key := Key.from_bytes(forged))
    assert forged_key.digest() != key.digest()
    # A key whose digests were stripped is malformed.
    stripped = Key(method="advparams", params={"tensors": key.params["tensors"]}, tensors=key.tensors)
    with pytest.raises(KeyFormatError):
        ms.unlock(locked, stripped)


@pytest.mark.filterwarnings("ignore:advparams stopped")
def test_same_seed_same_key(_owner_cnn, mnist):
    kw = dict(max_params=4, target_accuracy=0.0, batch_size=64, seed=3)
    _, k1 = AdvParams(**kw).lock(_owner_cnn, mnist.owner)
    l2, k2 = AdvParams(**kw).lock(copy.deepcopy(_owner_cnn), mnist.owner)
    assert k1.params["changed"] == 4
    k2.created = k1.created
    assert k1.digest() == k2.digest()
    _, k3 = AdvParams(**{**kw, "seed": 4}).lock(_owner_cnn, mnist.owner)
    assert k3.params["locked_digest"] != k1.params["locked_digest"]


def test_layers_restricts_perturbation(_owner_cnn, mnist):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 3 conv weights will not reach the target; that is expected here
        locked, key = AdvParams(max_params=3, batch_size=64, layers=["features.0"]).lock(
            _owner_cnn, mnist.owner)
    assert key.params["tensors"] == ["features.0.weight"]
    changed = [n for n, v in locked.state_dict().items() if not torch.equal(v, _owner_cnn.state_dict()[n])]
    assert changed == ["features.0.weight"]
    with pytest.raises(ModelError, match="nope"):
        AdvParams(layers=["nope"]).lock(_owner_cnn, mnist.owner)


def test_budget_not_reached_warns(_owner_cnn, mnist):
    with pytest.warns(WeakProtection, match="above the target"):
        _, key = AdvParams(max_params=1, target_accuracy=0.0, batch_size=32).lock(_owner_cnn, mnist.owner)
    assert key.params["target_reached"] is False and key.params["changed"] == 1
    # A caller that must not keep a lock that still works turns the warning into the error it also is.
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeakProtection)
        with pytest.raises(ModelSealError, match="missed its target.*max_params"):
            AdvParams(max_params=1, target_accuracy=0.0, batch_size=32).lock(_owner_cnn, mnist.owner)


def test_auto_budget_moves_many_weights_per_pass_and_reports_each_pass(_owner_cnn, mnist):
    """max_params='auto': pass p moves up to 64 x 4^p weights chosen from one gradient; the pass that reaches the
    target is trimmed; progress is one unit per gradient pass, out of max_passes."""
    calls = []
    locked, key = AdvParams(seed=0).lock(_owner_cnn, mnist.owner,
                                         progress=lambda done, total, desc, info: calls.append((done, total, info)))
    p = key.params
    assert p["max_params"] == "auto" and p["target_reached"] and 1 <= p["passes"] <= 3
    assert p["changed"] > p["passes"]  # more than one weight a pass
    assert calls and all(total == p["max_passes"] for _, total, _ in calls)
    assert [d for d, _, _ in calls] == list(range(1, p["passes"] + 1)) and "weights" in calls[-1][2]
    assert _equal(_state(ms.unlock(locked, key)), _state(_owner_cnn))
    # A fixed budget is a ceiling on the moved weights, whatever the passes would move.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakProtection)
        _, small = AdvParams(seed=0, max_params=70, target_accuracy=0.0).lock(_owner_cnn, mnist.owner)
    assert small.params["changed"] == 70 and small.params["passes"] == 2


def test_max_passes_bounds_the_auto_lock(_owner_cnn, mnist):
    with pytest.warns(WeakProtection, match=r"\(1 gradient passes\)"):
        _, key = AdvParams(seed=0, max_passes=1, target_accuracy=0.0).lock(_owner_cnn, mnist.owner)
    assert key.params["passes"] == 1 and key.params["changed"] == 64


@pytest.mark.parametrize("kw", [{"max_params": 0}, {"max_params": 2.5}, {"eps": 0}, {"eps": -1.0},
                                {"eps": float("nan")}, {"target_accuracy": 1.5}, {"batch_size": 0},
                                {"seed": -1}, {"layers": []}, {"max_params": True}, {"max_params": "lots"},
                                {"max_params": None}, {"max_passes": 0}, {"max_passes": 65}])
def test_bad_parameters(kw):
    with pytest.raises(ModelSealError):
        AdvParams(**kw)


def test_bad_inputs(_owner_cnn, mnist, locked_pair):
    empty = TensorData(mnist.owner.x[:0], mnist.owner.y[:0], mnist.meta)
    with pytest.raises(DataError, match="empty"):
        AdvParams().lock(_owner_cnn, empty)
    with pytest.raises(ModelError):
        AdvParams().lock("not a model", mnist.owner)  # type: ignore[arg-type]
    _, _, locked, _ = locked_pair
    with pytest.raises(KeyFormatError):
        AdvParams().unlock(locked, "key")  # type: ignore[arg-type]
    with pytest.raises(KeyFormatError, match="advparams"):
        AdvParams().unlock(locked, Key(method="trigger-set"))


def _benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "advparams.py"
    spec = importlib.util.spec_from_file_location("advparams_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_strongest_key_free_attacker_against_scratch_on_digits():
    """benchmarks/advparams.py's quick attacker grid on the digits CNN (owner 0.939), 1 % and 10 % of the data,
    against the best from-scratch model on the same images (1 %: 0.404, 10 %: 0.848).

    Measured (before issue 39's batched passes), the one-weight-a-pass greedy lock (18 of 22,154 weights, 0.081 %;
    locked 0.108) does NOT hold: fine-tuning
    only the weights within 2 % of their layer's range from its edges recovers 0.853 with 7 images (+44.9
    points) and 0.950 with 72 (+10.2); resetting the 50 largest-gradient weights alone gives 0.823. The hidden
    lock (hide_rank=100, eps=1.0, 300 weights = 1.35 %) holds, but only reaches 0.274 locked (its 0.1 target
    missed): best recovery 0.424 with 1 % (+1.9 points, fine-tuning each layer's 10 % tails) and 0.814 with
    10 % (-3.3, plain fine-tuning)."""
    g = {"ft_lr": [1e-3, 1e-2], "ft_epochs": [5, 30], "scratch_lr": [3e-3], "scratch_epochs": [50, 200],
         "k": [50, 200]}
    before = torch.get_num_threads()
    try:  # the benchmark runs on one thread; later tests (served outputs compared bit for bit) need the suite's
        res = _benchmark().run("digits", fractions=(0.01, 0.10), grids=g)
    finally:
        torch.set_num_threads(before)
    greedy, hidden = res["locks"]["greedy"], res["locks"]["hidden"]
    assert res["owner_accuracy"] > 0.9
    for lock in (greedy, hidden):
        assert lock["unlock_bit_exact"] and lock["unlocked_accuracy"] == res["owner_accuracy"]
    assert greedy["locked_accuracy"] < 0.15 and hidden["locked_accuracy"] < 0.3
    one, ten = greedy["recovery"]
    # The batched lock (40 weights, 0.18 %) is recovered less than the former one-weight-a-pass lock (+44.9 points
    # with 7 images) but still recovered: +16.6 with 7 images, +6.1 with 72 (reset the largest-gradient weights).
    assert not one["lock_holds"] and one["gap_points"] > 10, one
    assert not ten["lock_holds"], ten
    assert hidden["params_changed_percent"] < 1.5
    assert all(row["lock_holds"] for row in hidden["recovery"]), hidden["recovery"]

@pytest.fixture(scope="module")
def digits_owner():
    data = ms.data.load("digits", seed=0)
    owner = ms.models.build("cnn", data.meta, seed=0)
    ms.train.fit(owner, data.owner, epochs=20, seed=0, progress=False)
    return owner, data


def _gradient_ranks(model: nn.Module, data, changed: list[torch.Tensor]) -> list[int]:
    """Rank (0 = largest) of every changed weight by |loss gradient| of `model` on `data`, among all Conv/Linear
    weights: what a key-free attacker who knows AdvParams computes."""
    x, y = ms.data.as_tensors(data)
    params = [p for p in model.parameters() if p.dim() >= 2]
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), params)
    flat = torch.cat([g.abs().flatten() for g in grads])
    rank = torch.empty_like(flat, dtype=torch.long)
    rank[flat.argsort(descending=True)] = torch.arange(len(flat))
    return sorted(rank[torch.cat([c.flatten() for c in changed])].tolist())


def _near_edges(model: nn.Module) -> int:
    """Conv/Linear weights within 2 % of their layer's range from its min or max."""
    n = 0
    for p in (p.detach() for p in model.parameters() if p.dim() >= 2):
        band = 0.02 * (p.max() - p.min())
        n += int(((p <= p.min() + band) | (p >= p.max() - band)).sum())
    return n


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:advparams stopped")
def test_hidden_lock_keeps_locked_weights_out_of_the_top_gradients_and_off_the_edges(digits_owner):
    """The paper's greedy step (here eps=1.0) leaves its weights at the very top of the locked model's gradient
    (ranks 0-4 of 22,154 on another batch) and piles them at their layer's edges (38 weights within 2 % of the
    range from min or max, the owner has 22), where a key-free attacker finds them. hide_rank=100 keeps every
    one out of the top 100 on the check batch (measured after 30 weights: the most visible at rank 124, no step
    without a hidden move), out of the top 50 on another batch (measured: 89), and off the edges (25)."""
    owner, data = digits_owner
    kw = dict(eps=1.0, max_params=30, target_accuracy=0.0)
    greedy, _ = AdvParams(**kw).lock(owner, data.owner)
    hidden, hkey = AdvParams(hide_rank=100, **kw).lock(owner, data.owner)
    assert hkey.params["changed"] == 30 and hkey.params["unhidden_steps"] < 30 // 4
    assert hkey.params["visible_rank_after"] >= 100
    other = data.owner.subset(256, 1)
    changed = lambda m: [a != b for a, b in zip(owner.parameters(), m.parameters(), strict=True)  # noqa: E731
                         if a.dim() >= 2]
    assert _gradient_ranks(greedy, other, changed(greedy))[0] < 5
    assert _gradient_ranks(hidden, other, changed(hidden))[0] >= 50
    assert _near_edges(greedy) > _near_edges(owner) + 10
    assert _near_edges(hidden) <= _near_edges(owner) + 6
    assert _equal(_state(ms.unlock(hidden, hkey)), _state(owner))


@pytest.mark.filterwarnings("ignore:advparams stopped")
def test_hidden_lock_unlocks_bit_exact_and_records_what_it_hid():
    data = ms.data.load("digits", seed=0)
    owner = ms.models.build("mlp", data.meta, seed=0)
    ms.train.fit(owner, data.owner, epochs=3, seed=0, progress=False)
    locked, key = AdvParams(hide_rank=20, candidates=4, max_params=5, target_accuracy=0.0).lock(owner, data.owner)
    assert key.params["changed"] == 5 and key.params["hide_rank"] == 20 and key.params["candidates"] == 4
    assert 0 <= key.params["unhidden_steps"] <= 5 and isinstance(key.params["visible_rank_after"], int)
    assert not _equal(_state(locked), _state(owner))
    assert _equal(_state(ms.unlock(locked, key)), _state(owner))


@pytest.mark.slow
def test_locks_a_resnet18_near_chance_within_one_epoch():
    """Issue 39: a BatchNorm ResNet-18 (width 16 here for the suite's time; the full width-64 one is measured in
    benchmarks/scale.py: 0.917 -> 0.495 in 0.68 E) locked to within 10 points of chance in at most one epoch
    (2,048 images) of its own training, measured in this run; unlock stays bit-exact."""
    import time

    torch.set_num_threads(1)
    d = ms.data.load("sample-images", seed=0)  # 3x32x32 patches, 2 classes: chance 0.5
    owner = ms.models.build("resnet18", d.meta, seed=0, width=16)
    ms.train.fit(owner, d.owner, epochs=3, seed=0, progress=False)
    assert ms.train.evaluate(owner, d.test) > 0.9
    x, y = ms.data.as_tensors(d.owner)
    epoch = TensorData(torch.cat([x, x])[:2048], torch.cat([y, y])[:2048], d.meta)
    t = time.perf_counter()
    ms.train.fit(copy.deepcopy(owner), epoch, epochs=1, seed=0, progress=False)
    one_epoch = time.perf_counter() - t
    t = time.perf_counter()
    locked, key = AdvParams(seed=0).lock(owner, d.owner, progress=False)
    seconds = time.perf_counter() - t
    assert ms.train.evaluate(locked, d.test) <= 0.5 + 0.1
    assert seconds <= 1.5 * one_epoch, (seconds, one_epoch)  # measured 0.5-0.9 E on a shared machine
    assert _equal(_state(ms.unlock(locked, key)), _state(owner))
