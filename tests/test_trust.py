"""Verdicts a third party can check: the verifier sets the rule, every key is committed, no accusation
without a calibrated null, evidence files re-checked by `check`, one fused verdict, the sequential test's
false-accusation rate simulated."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import modelseal as ms
from modelseal import commitment, evidence, methods, stats
from modelseal.errors import KeyIntegrityError, ModelSealError


@pytest.fixture(scope="module")
def digits():
    return ms.data.load("digits", seed=0)


@pytest.fixture(scope="module")
def owner8(digits):
    m = ms.models.build("cnn", digits.meta, seed=0)
    ms.train.fit(m, digits.owner, epochs=8, seed=0, progress=False)
    return m


@pytest.fixture(scope="module")
def independent8(digits):
    """Twelve independent 8x8 digits models: 2 architectures x 6 seeds, trained on the attacker split."""
    out = []
    for arch in ("cnn", "mlp"):
        for seed in range(6):
            m = ms.models.build(arch, digits.meta, seed=500 + seed)
            ms.train.fit(m, digits.attacker, epochs=6, seed=500 + seed, progress=False)
            out.append(m)
    return out


@pytest.fixture(scope="module")
def keys8(owner8, digits):
    """One protected model and key per judging method, with the commitment made at protect time."""
    out = {}
    for name, params in [("trigger-set", {"n": 30}), ("c-examples", {"n": 30, "steps": 30}),
                         ("tafa", {"n": 40, "steps": 8}), ("deepmarks", {"users": 7, "epochs": 1})]:
        method = methods.get(name)(seed=3, **params)
        out[name] = methods.protect(method, copy.deepcopy(owner8), digits.owner, digits.meta, progress=False)
    return out


# ------------------------------------------------------------------------------------- the verifier's rule
@pytest.mark.parametrize("name", ["trigger-set", "c-examples", "tafa", "deepmarks"])
@pytest.mark.parametrize("alpha", [0.0, 1.0, -1.0, 2.0, float("nan"), float("inf"), "0.1", True])
def test_every_method_refuses_bad_alpha(keys8, owner8, name, alpha):
    with pytest.raises(ModelSealError, match="alpha must be a number in \\(0.0, 1.0\\)"):
        ms.verify(owner8, keys8[name].key, alpha=alpha)


@pytest.mark.parametrize("name, field, value", [("trigger-set", "alpha", 0.9), ("trigger-set", "batch", 1),
                                                ("tafa", "alpha", 0.99), ("tafa", "permutations", 10**9),
                                                ("tafa", "margin", -5.0), ("deepmarks", "alpha", 0.99),
                                                ("c-examples", "alpha", 0.99)])
def test_an_edited_key_parameter_changes_nothing_and_the_commitment_names_it(keys8, independent8, name, field,
                                                                              value):
    done = keys8[name]
    edited = ms.Key(done.key.method, params={**done.key.params, field: value}, tensors=dict(done.key.tensors),
                    signature=dict(done.key.signature), created=done.key.created)
    suspect = independent8[1] if name == "deepmarks" else independent8[6]  # a CNN (same layers) or an MLP
    a, b = ms.verify(suspect, done.key), ms.verify(suspect, edited)
    assert (a.owned, a.p_value, a.alpha) == (b.owned, b.p_value, b.alpha) and not b.owned
    with pytest.raises(KeyIntegrityError, match=f"params.{field}"):
        ms.verify(suspect, edited, commitment=done.commitment)


def test_unknown_verifier_parameter_is_refused(keys8, owner8):
    with pytest.raises(ModelSealError, match="does not take the verifier parameter"):
        ms.verify(owner8, keys8["trigger-set"].key, permutations=5)


def test_declared_parameters_differing_from_the_verifiers_are_reported(keys8):
    done = keys8["trigger-set"]
    v = ms.verify(done.models[0], done.key, commitment=done.commitment, alpha=1e-3)
    assert v.details["commitment_checked"] and v.details["verifier_differs_from_declared"]["alpha"] == {
        "declared": 1e-6, "used": 1e-3}


# ------------------------------------------------------------------------------------------ commitments
@pytest.mark.parametrize("name", ["trigger-set", "c-examples", "tafa", "deepmarks", "advparams"])
def test_every_key_opens_its_commitment_and_a_one_byte_change_is_caught(keys8, owner8, digits, name, tmp_path):
    if name == "advparams":
        done = methods.protect(methods.get("advparams")(seed=1), copy.deepcopy(owner8), digits.owner)
    else:
        done = keys8[name]
    public = done.commitment
    assert public["method"] == name and public["tensors"] and "seed" not in public["params"]
    methods.open_commitment(done.key, public)
    path = commitment.save(public, tmp_path / "pub.json")
    methods.open_commitment(ms.Key.load(done.key.save(tmp_path / "k.seal")), commitment.load(path))
    tname = sorted(done.key.tensors)[0]
    t = done.key.tensors[tname].clone()
    t.view(torch.uint8).reshape(-1)[0] ^= 1  # flip one bit of one byte
    forged = ms.Key(done.key.method, params=dict(done.key.params), tensors={**done.key.tensors, tname: t},
                    signature=dict(done.key.signature), created=done.key.created)
    with pytest.raises(KeyIntegrityError, match=tname if name != "trigger-set" else "trigger|" + tname):
        methods.open_commitment(forged, public)


def test_cli_writes_a_commitment_beside_every_key_and_commit_works_for_every_method(tmp_path, owner8):
    from typer.testing import CliRunner

    from modelseal.cli import app

    ms.models.save_model(owner8, tmp_path / "owner.safetensors")
    r = CliRunner().invoke(app, ["fingerprint", "extract", str(tmp_path / "owner.safetensors"), "--key",
                                 str(tmp_path / "fp.seal"), "--set", "n=12", "--set", "steps=4", "--seed", "2"])
    assert r.exit_code == 0, r.output
    public = commitment.load(tmp_path / "fp.public.json")
    assert public["method"] == "tafa"
    r = CliRunner().invoke(app, ["commit", str(tmp_path / "fp.seal"), "--out", str(tmp_path / "again.json")])
    assert r.exit_code == 0, r.output
    assert commitment.load(tmp_path / "again.json")["tensors"] == public["tensors"]


# ------------------------------------------------------------------------------- no accusation without a null
def test_c_examples_without_references_accuses_nobody_and_says_not_judged(keys8, independent8):
    key = keys8["c-examples"].key
    for m in independent8:
        v = ms.verify(m, key)
        assert not v.owned and not v.judged and "no reference models" in v.details["not_judged"]
        assert "not judged" in v.summary() and 0 <= v.details["match_rate"] <= 1


def test_c_examples_with_references_accuses_none_of_the_independent_models(keys8, independent8):
    key = keys8["c-examples"].key
    refs = [independent8[0], independent8[6]]  # one CNN, one MLP
    for m in independent8[1:6] + independent8[7:]:
        v = ms.verify(m, key, references=refs, alpha=0.05)
        assert v.judged and not v.owned, v.summary()
        # two references cannot support a p-value below 1/3
        assert v.p_value >= 1 / 3


# ------------------------------------------------------------------------------------------ evidence
@pytest.mark.parametrize("name", ["trigger-set", "c-examples", "tafa", "deepmarks"])
def test_evidence_round_trips_and_tampering_is_detected(keys8, independent8, name, tmp_path):
    done = keys8[name]
    kw = {"references": [independent8[0], independent8[6]], "alpha": 0.4} if name == "c-examples" else {}
    suspect = ms.Suspect(done.models[0])
    path = tmp_path / "ev.json"
    v = ms.verify(suspect, done.key, evidence=path, **kw)
    pub = tmp_path / "pub.json"
    commitment.save(done.commitment, pub)
    rule = {"alpha": kw["alpha"]} if "alpha" in kw else None  # the checker accepts the verifier's alpha here
    report = evidence.check(path, pub, rule=rule)
    assert report["agrees"], report["problems"]
    assert report["recomputed"]["p_value"] == pytest.approx(v.p_value, rel=1e-9, abs=1e-300)
    with pytest.raises(ms.errors.OutputExistsError):
        ms.verify(suspect, done.key, evidence=path, **kw)
    ev = json.loads(path.read_text())

    def tampered(change) -> dict:
        e = json.loads(json.dumps(ev))
        change(e)
        return evidence.check(e, done.commitment, rule=rule)

    # a changed answer
    def answer(e):
        a = e["transcript"]["answers"]
        if isinstance(a, list):  # every label answer shifted: a marked model's matches all become misses
            a[:] = [(x + 1) % 10 for x in a]
        else:
            t = evidence._dec(a, "answers")
            t.reshape(-1)[0] += 1.0
            e["transcript"]["answers"] = evidence._enc(t)

    assert not tampered(answer)["agrees"]
    # a changed query (an opened input or trigger)
    qname = {"trigger-set": "images", "c-examples": "examples", "tafa": "inputs", "deepmarks": "X"}[name]

    def query(e):
        t = evidence._dec(e["opened"][qname], qname)
        t.reshape(-1)[0] += 0.5
        e["opened"][qname] = evidence._enc(t)

    assert not tampered(query)["agrees"]

    # a changed parameter
    def param(e):
        e["transcript"]["verifier"]["alpha"] = 0.5 if e["transcript"]["verifier"]["alpha"] != 0.5 else 0.25

    assert not tampered(param)["agrees"]


def test_check_cli_agrees_and_reports_tampering(keys8, tmp_path):
    from typer.testing import CliRunner

    from modelseal.cli import app

    done = keys8["trigger-set"]
    ms.models.save_model(done.models[0], tmp_path / "marked.safetensors")
    done.key.save(tmp_path / "wm.seal")
    commitment.save(done.commitment, tmp_path / "wm.public.json")
    r = CliRunner().invoke(app, ["verify", str(tmp_path / "wm.seal"), str(tmp_path / "marked.safetensors"),
                                 "--evidence", str(tmp_path / "ev.json"), "--commitment",
                                 str(tmp_path / "wm.public.json")])
    assert r.exit_code == 0 and "OWNED" in r.output, r.output
    r = CliRunner().invoke(app, ["check", str(tmp_path / "ev.json"), "--commitment", str(tmp_path / "wm.public.json")])
    assert r.exit_code == 3 and "the evidence holds" in r.output and "time not proven" in r.output, r.output
    ev = json.loads((tmp_path / "ev.json").read_text())
    ev["result"]["p_value"] = 1e-30
    (tmp_path / "ev2.json").write_text(json.dumps(ev))
    r = CliRunner().invoke(app, ["check", str(tmp_path / "ev2.json"), "--commitment",
                                 str(tmp_path / "wm.public.json"), "--json"])
    assert r.exit_code == 1 and json.loads(r.output)["agrees"] is False


# ------------------------------------------------------------------------------------------ fused verdict
def test_fused_verdict_over_an_owned_and_a_not_owned_key(keys8, digits, owner8):
    wm = keys8["trigger-set"]
    other = methods.protect(methods.get("trigger-set")(seed=99, n=30), copy.deepcopy(owner8), digits.owner)
    v = ms.verify(wm.models[0], [wm.key, other.key], alpha=1e-3)
    ps = [d["p_value"] for d in v.details["verdicts"]]
    assert v.method == "fused" and v.owned and "Holm" in v.details["rule"]
    assert v.p_value == pytest.approx(min(1.0, 2 * min(ps)))
    assert v.details["verdicts"][0]["owned"] and not v.details["verdicts"][1]["owned"]


def test_fused_verdict_never_owned_for_independent_models(keys8, independent8):
    ks = [keys8[n].key for n in ("trigger-set", "tafa", "c-examples")]
    for m in independent8[::3]:
        assert not ms.verify(m, ks).owned


def test_holm_adjustment():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([]) == []


# ------------------------------------------------------------------------------------------ null simulation
@pytest.mark.slow
@pytest.mark.parametrize("alpha", [1e-2, 1e-3])
def test_sequential_test_false_accusation_rate_over_100k_null_runs(alpha):
    """100,000 independent models answering at the chance rate 1/10, looks of 5, budget 100."""
    rng = np.random.default_rng(int(1 / alpha))
    trials, budget, p0, batch = 100_000, 100, 0.1, 5
    schedule = stats.sequential_schedule(budget, batch)
    seq = stats.sequential_design(tuple(schedule), p0)
    # vectorised replay of the test: cumulative matches at each look, stop at the first owned look
    hits = rng.random((trials, budget)) < p0
    cum = hits.cumsum(1)[:, [s - 1 for s in schedule]]
    tails = np.stack([seq.tails[j][cum[:, j]] for j in range(len(schedule))], 1)
    best = np.minimum.accumulate(tails, axis=1)
    uniq = np.unique(best)
    adj = {t: seq.adjusted(float(t)) for t in uniq}
    owned = np.vectorize(adj.get)(best) <= alpha
    rate = owned.any(1).mean()
    # exactly the rule sequential_test applies (checked on a sample)
    for i in range(200):
        assert stats.sequential_test(lambda lo, hi, h=hits[i]: h[lo:hi], budget, p0, alpha, batch)["owned"] == \
            bool(owned[i].any())
    se = np.sqrt(alpha * (1 - alpha) / trials)
    assert rate <= alpha + 3 * se, rate


@pytest.mark.slow
def test_tafa_permutation_test_false_accusation_rate():
    """The paired permutation test (TAFA's) on independent kink matrices: rate <= alpha = 1e-2."""
    rng = np.random.default_rng(7)
    trials, alpha, owned = 100_000, 1e-2, 0
    for _ in range(trials):
        a = stats.rank_standardize(rng.standard_normal((60, 3)))
        b = stats.rank_standardize(rng.standard_normal((60, 3)))
        owned += stats.paired_permutation_test(a, b, margin=0.0)["p_value"] <= alpha
    se = np.sqrt(alpha * (1 - alpha) / trials)
    assert owned / trials <= alpha + 3 * se, owned / trials
