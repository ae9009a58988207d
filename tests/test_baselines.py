"""Peer baseline fingerprints (akh, ipguard, modeldiff, sac) on a small digits CNN: they extract, score the owner
and a fine-tuned copy above independent models of two architectures, never accuse without references, judge
with references, write re-checkable evidence, and refuse bad inputs in one line."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

import modelseal as ms
from modelseal import evidence, methods
from modelseal.cli import app
from modelseal.data import InputSpec
from modelseal.errors import KeyFormatError, ModelSealError, SuspectError
from modelseal.suspect import Suspect

BASELINES = ["akh", "ipguard", "modeldiff", "sac"]
# small keys keep extraction to a fraction of a second (ipguard's boundary search is the slowest)
SMALL = {"akh": {}, "ipguard": {"n": 40, "steps": 150}, "modeldiff": {"n": 60}, "sac": {"n": 60}}


@pytest.fixture(scope="module")
def zoo():
    """A digits CNN owner, its copy fine-tuned on the attacker split, and four independents (2 CNN, 2 MLP).
    One torch thread while this module runs; the suite's setting comes back after it (a later test compares
    a served model's outputs bit for bit with this process's, which needs the same thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    d = ms.data.load("digits", seed=0)
    owner = ms.models.build("cnn", d.meta, seed=0)
    ms.train.fit(owner, d.owner, epochs=10, seed=0, progress=False)
    tuned = copy.deepcopy(owner)
    ms.train.fit(tuned, d.attacker, epochs=3, lr=3e-4, seed=5, progress=False)
    independents = []
    for arch, seed in [("cnn", 11), ("cnn", 12), ("mlp", 13), ("mlp", 14)]:
        m = ms.models.build(arch, d.meta, seed=seed)
        ms.train.fit(m, d.attacker, epochs=10, seed=seed, progress=False)
        independents.append(m)
    yield {"data": d, "owner": owner, "tuned": tuned, "independents": independents, "keys": {}}
    torch.set_num_threads(before)


def _key(zoo, name):
    if name not in zoo["keys"]:
        zoo["keys"][name] = methods.get(name)(seed=0, **SMALL[name]).extract(zoo["owner"], zoo["data"].meta)
    return zoo["keys"][name]


@pytest.mark.parametrize("name", BASELINES)
def test_owner_and_tuned_copy_score_above_independents_of_two_architectures(zoo, name):
    key = _key(zoo, name)
    cls = methods.get(name)
    own = cls().verify(zoo["owner"], key).score
    tuned = cls().verify(zoo["tuned"], key).score
    ind = [cls().verify(m, key).score for m in zoo["independents"]]
    assert own == pytest.approx(1.0)
    assert tuned > max(ind), (tuned, ind)


@pytest.mark.parametrize("name", BASELINES)
def test_without_references_the_baseline_is_score_only_and_never_accuses(zoo, name):
    key = _key(zoo, name)
    for m in [zoo["owner"], *zoo["independents"]]:
        v = methods.get(name)().verify(m, key)
        assert not v.owned and v.p_value == 1.0 and v.details["score_only"] is True
        assert "references" in v.details["reason"]


@pytest.mark.parametrize("name", ["akh", "modeldiff"])
def test_with_references_the_p_value_is_never_below_the_rank_floor(zoo, name):
    key = _key(zoo, name)
    refs = zoo["independents"][:2]  # one CNN, one CNN of another seed; the MLPs are judged
    cls = methods.get(name)
    owner = cls().verify(zoo["owner"], key, references=refs)
    assert owner.p_value == pytest.approx(1 / 3) and owner.owned is False  # alpha 1e-6 needs 999,999 references
    assert cls().verify(zoo["owner"], key, references=refs, alpha=0.34).owned
    for m in zoo["independents"][2:]:
        v = cls().verify(m, key, references=refs)
        assert not v.owned and v.p_value >= 1 / 3


@pytest.mark.parametrize("name", BASELINES)
def test_evidence_rechecks_to_the_same_verdict_and_refuses_changed_answers(zoo, name):
    key = _key(zoo, name)
    public = methods.commit(key)
    v = methods.judge(Suspect(zoo["tuned"]), key, references=zoo["independents"][:1])
    ev = evidence.make(v, key, Suspect(zoo["tuned"]))
    assert evidence.check(ev, public, suspect=zoo["tuned"])["agrees"]
    forged = json.loads(json.dumps(ev))
    forged["result"]["score"] = v.score - 0.25
    assert not evidence.check(forged, public)["agrees"]


def test_akh_key_holds_the_owners_wrong_labels(zoo):
    key = _key(zoo, "akh")
    assert len(key.tensors["inputs"]) == key.params["n"] >= 10
    assert bool((key.tensors["labels"] != key.tensors["true_labels"]).all())


def test_data_needing_baselines_refuse_a_plain_input_spec_without_data(zoo):
    spec = InputSpec((1, 8, 8))
    for name in ("akh", "sac"):
        with pytest.raises(ModelSealError, match="data=NAME") as e:
            methods.get(name)().extract(zoo["owner"], spec)
        assert "\n" not in str(e.value)
    key = methods.get("akh")(data="digits").extract(zoo["owner"], spec)  # the declared parameter gives it
    assert key.params["n"] >= 10


class _LabelsOnly:
    """A black-box backend that answers class labels only."""

    input_shape = (1, 8, 8)
    label_only = True

    def __init__(self, model):
        self.model = model

    def __call__(self, x):
        with torch.no_grad():
            return self.model(x).argmax(1)


def test_bad_inputs_end_in_one_line(zoo):
    with pytest.raises(ModelSealError, match="shape"):
        methods.get("akh")(data="mnist5k").extract(zoo["owner"], zoo["data"].meta)
    with pytest.raises(ModelSealError, match="samples"):
        methods.get("sac")(samples="mixup")
    with pytest.raises(SuspectError, match="labels only"):
        methods.get("modeldiff")().verify(Suspect(_LabelsOnly(zoo["owner"])), _key(zoo, "modeldiff"))
    with pytest.raises(SuspectError, match="queries"):
        methods.get("sac")().verify(zoo["owner"], _key(zoo, "sac"), max_queries=5)
    relabelled = ms.Key("akh", params={}, tensors={"inputs": torch.zeros(3, 1, 8, 8)},
                        signature=_key(zoo, "akh").signature)
    with pytest.raises(KeyFormatError, match="labels"):
        methods.judge(zoo["owner"], relabelled)


def test_cli_extracts_and_verifies_a_baseline(zoo, tmp_path):
    """The data set comes from the model file's header (as `modelseal train` records it), else from --set."""
    runner = CliRunner()
    ms.models.save_model(zoo["owner"], tmp_path / "owner.safetensors", extra={"data": "digits"})
    ms.models.save_model(zoo["owner"], tmp_path / "bare.safetensors")
    ms.models.save_model(zoo["independents"][2], tmp_path / "other.safetensors")
    r = runner.invoke(app, ["fingerprint", "extract", str(tmp_path / "owner.safetensors"), "--method", "akh",
                            "--key", str(tmp_path / "akh.seal"), "--seed", "1", "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["verify", str(tmp_path / "akh.seal"), str(tmp_path / "other.safetensors"),
                            "--commitment", str(tmp_path / "akh.public.json"), "--json"])
    assert r.exit_code == 0, r.output
    v = json.loads(r.stdout)
    assert v["owned"] is False and v["details"]["score_only"] is True
    r = runner.invoke(app, ["fingerprint", "extract", str(tmp_path / "bare.safetensors"), "--method", "sac",
                            "--key", str(tmp_path / "sac.seal")])
    assert r.exit_code == 2 and "--set data=" in r.output
    r = runner.invoke(app, ["fingerprint", "extract", str(tmp_path / "bare.safetensors"), "--method", "sac",
                            "--key", str(tmp_path / "sac.seal"), "--set", "data=digits"])
    assert r.exit_code == 0, r.output
