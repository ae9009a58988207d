"""The dishonest owner's forgery corpus: evidence, keys and commitments written to frame an innocent model.

Each forgery is made the way an owner with every secret would make it (the key, the nonces, the
commitment, any model's real answers) and must be refused by `verify` or `check` with one clear line — or,
where the forgery only fabricates answers, be caught by `check --suspect` while plain `check` says that it
proved the arithmetic, not which model answered.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

import modelseal as ms
from modelseal import commitment, evidence, methods
from modelseal.cli import app
from modelseal.errors import KeyFormatError, KeyIntegrityError, ModelSealError
from modelseal.methods import trigger_set as ts


@pytest.fixture(scope="module")
def digits():
    return ms.data.load("digits", seed=0)


@pytest.fixture(scope="module")
def owner(digits):
    m = ms.models.build("cnn", digits.meta, seed=0)
    ms.train.fit(m, digits.owner, epochs=6, seed=0, progress=False)
    return m


@pytest.fixture(scope="module")
def innocents(digits):
    """Independent models of two architectures, trained on the attacker split."""
    out = []
    for arch, seed in (("cnn", 41), ("mlp", 42), ("mlp", 43)):
        m = ms.models.build(arch, digits.meta, seed=seed)
        ms.train.fit(m, digits.attacker, epochs=5, seed=seed, progress=False)
        out.append(m)
    return out


@pytest.fixture(scope="module")
def wm(owner, digits):
    return methods.protect(methods.get("trigger-set")(n=60, seed=11), copy.deepcopy(owner), digits.owner,
                           progress=False)


@pytest.fixture(scope="module")
def honest(wm, tmp_path_factory):
    """An honest evidence file of the marked model."""
    path = tmp_path_factory.mktemp("ev") / "ev.json"
    v = ms.verify(wm.models[0], wm.key, evidence=path)
    assert v.owned
    return json.loads(path.read_text())


def _forge(wm, asked, answers) -> dict:
    """Evidence a dishonest owner writes: its own choice of triggers, answers and a recomputed result."""
    images, _, nonces = ts.key_tensors(wm.key)
    idx = torch.tensor(asked)
    ev = {"type": evidence.TYPE, "format": evidence.FORMAT, "modelseal_version": "x", "created": "x",
          "method": "trigger-set", "suspect": {"kind": "file", "name": "innocent.safetensors", "sha256": "0" * 64},
          "commitment": wm.commitment, "nonce": None,
          "opened": {"index": evidence._enc(idx), "images": evidence._enc(images[idx]),
                     "nonces": evidence._enc(nonces[idx])},
          "transcript": {"verifier": {"alpha": 1e-6, "batch": len(asked), "max_queries": None,
                                      "budget": len(asked)}, "asked": list(asked), "answers": list(answers)}}
    labels = wm.key.tensors["labels"][idx]
    hits = sum(int(a) == int(b) for a, b in zip(answers, labels.tolist(), strict=True))
    p = ms.stats.binomial_tail(hits, len(asked), 0.1)  # the forger's claim: k of k matched, p = 0.1^k
    ev["result"] = {"score": hits / len(asked), "p_value": p, "owned": p <= 1e-6, "alpha": 1e-6,
                    "judged": True, "queries": len(asked)}
    return ev


def _labels(model, x):
    return ms.Suspect(model).labels(x).reshape(-1).tolist()


# ------------------------------------------------------------------------------------------ trigger-set
def test_cherry_picked_matches_of_an_innocent_model_are_refused(wm, innocents):
    """The triggers an innocent model matches by chance, with its real answers, as the whole transcript."""
    images, labels, _ = ts.key_tensors(wm.key)
    innocent = innocents[0]
    got = _labels(innocent, images)
    picked = [i for i in range(len(labels)) if got[i] == int(labels[i])][:8]
    assert len(picked) >= 3
    ev = _forge(wm, picked, [got[i] for i in picked])
    assert ev["result"]["p_value"] <= 1e-3  # what the forger claims: every asked trigger matched
    report = evidence.check(ev, wm.commitment)
    assert not report["agrees"]
    assert any("not the committed query order" in p for p in report["problems"]), report["problems"]
    # and re-asking the real innocent model gives exactly these answers, so only the order check stops it
    assert evidence.check(ev, wm.commitment, suspect=innocent)["problems"]


def test_one_matching_trigger_asked_again_and_again_is_refused(wm, innocents):
    images, labels, _ = ts.key_tensors(wm.key)
    got = _labels(innocents[1], images)
    i = next(i for i in range(len(labels)) if got[i] == int(labels[i]))
    report = evidence.check(_forge(wm, [i] * 8, [got[i]] * 8), wm.commitment)
    assert not report["agrees"] and any("committed query order" in p for p in report["problems"])


def test_the_committed_order_prefix_with_fabricated_answers_needs_the_suspect(wm, innocents, tmp_path):
    """Writing the key's labels in as an innocent model's answers, in the committed order: the arithmetic
    holds, so plain `check` can only say it did not prove which model answered; `check --suspect` fails."""
    order = ts.committed_order(wm.commitment["root"], 60).tolist()[:10]
    labels = wm.key.tensors["labels"]
    ev = _forge(wm, order, [int(labels[i]) for i in order])
    ev["transcript"]["verifier"].update(batch=5, budget=60)
    res = ms.stats.sequential_replay([True] * 10, 60, 0.1, 1e-6, 5)
    ev["result"].update(score=res["score"], p_value=res["p_value"], owned=res["owned"])
    plain = evidence.check(ev, wm.commitment)
    assert plain["agrees"] and any("which model gave these answers" in s for s in plain["not_proved"])
    for innocent in innocents[:2]:
        report = evidence.check(ev, wm.commitment, suspect=innocent)
        assert not report["agrees"] and any("did not come from this suspect" in p for p in report["problems"])
    # through the CLI: the same, with the suspect as a file
    path, model = tmp_path / "ev.json", tmp_path / "innocent.safetensors"
    path.write_text(json.dumps(ev))
    commitment.save(wm.commitment, tmp_path / "pub.json")
    ms.models.save_model(innocents[0], model)
    r = CliRunner().invoke(app, ["check", str(path), "--commitment", str(tmp_path / "pub.json")])
    # the answers hold but no trusted time: exit 3, never 0
    assert r.exit_code == 3 and "not proved: which model gave these answers" in r.output, r.output
    assert "time not proven: 'created' is the owner's own statement" in r.output
    r = CliRunner().invoke(app, ["check", str(path), "--commitment", str(tmp_path / "pub.json"),
                                 "--suspect", str(model)])
    assert r.exit_code == 1 and "did not come from this suspect" in r.output, r.output


def test_labels_chosen_by_the_owner_are_refused(wm, innocents, digits):
    """A key whose labels are a public model's predictions (or the true classes of real digits): its
    labels are not the ones the committed triggers derive, so verify and commit refuse it."""
    images = wm.key.tensors["images"]
    chosen = torch.tensor(_labels(innocents[1], images))
    forged = ms.Key("trigger-set", params=dict(wm.key.params), signature=dict(wm.key.signature),
                    tensors={**wm.key.tensors, "labels": chosen}, created=wm.key.created)
    for m in innocents:
        with pytest.raises(KeyIntegrityError, match="labels chosen by the owner prove nothing"):
            ms.verify(m, forged)
    with pytest.raises(KeyIntegrityError, match="labels chosen by the owner"):
        methods.commit(forged)
    x, y = ms.data.as_tensors(digits.test)
    real = ms.Key("trigger-set", params=dict(wm.key.params), signature=dict(wm.key.signature),
                  tensors={**wm.key.tensors, "images": x[:60].float(), "labels": y[:60].long()},
                  created=wm.key.created)
    with pytest.raises(KeyIntegrityError, match="labels chosen by the owner"):
        ms.verify(innocents[0], real)


def test_a_key_without_derived_labels_is_refused(wm, owner):
    params = {k: v for k, v in wm.key.params.items() if k != "label_rule"}
    old = ms.Key("trigger-set", params=params, signature=dict(wm.key.signature), tensors=dict(wm.key.tensors),
                 created=wm.key.created)
    with pytest.raises(KeyIntegrityError, match="not derived from its committed triggers"):
        ms.verify(owner, old)


def test_labels_and_order_are_recomputed_from_the_public_commitment(wm):
    pub = wm.commitment
    labels = ts.derive_labels(pub["root"], len(pub["commitments"]), pub["signature"]["output_size"])
    assert labels.tolist() == wm.key.tensors["labels"].tolist()
    order = ts.committed_order(pub["root"], len(pub["commitments"]))
    assert sorted(order.tolist()) == list(range(60))
    # uniform labels: every class appears, none dominates (60 draws over 10 classes)
    counts = torch.bincount(torch.from_numpy(labels), minlength=10)
    assert (counts > 0).sum() >= 8 and counts.max() <= 15


def test_an_edited_root_beacon_or_creation_time_is_refused(wm, honest):
    for field, value in (("root", "0" * 64), ("beacon", "other")):
        pub = {**wm.commitment, field: value}
        report = evidence.check(honest, pub)
        assert not report["agrees"], field
        with pytest.raises(KeyIntegrityError):
            ms.verify(wm.models[0], wm.key, commitment=pub)
    with pytest.raises(KeyIntegrityError, match="created"):
        ms.verify(wm.models[0], wm.key, commitment={**wm.commitment, "created": "2020-01-01T00:00:00+00:00"})


def test_an_honest_transcript_passes_check_and_check_suspect(wm, honest):
    assert evidence.check(honest, wm.commitment)["agrees"]
    report = evidence.check(honest, wm.commitment, suspect=wm.models[0])
    assert report["agrees"], report["problems"]
    assert report["suspect_requeried"] and not any("which model" in s for s in report["not_proved"])


def test_the_checker_sets_alpha_and_the_looks(wm, honest):
    strict = evidence.check(honest, wm.commitment, rule={"alpha": 1e-15})
    assert not strict["agrees"] and any("under the checker's rule" in p for p in strict["problems"])
    looks = evidence.check(honest, wm.commitment, rule={"batch": 3})
    assert looks["rule"]["batch"] == 3 and looks["checker"]["batch"] == 3
    with pytest.raises(ModelSealError, match="alpha must be"):
        evidence.check(honest, wm.commitment, rule={"alpha": 0.0})
    with pytest.raises(ModelSealError, match="not permutations"):
        evidence.check(honest, wm.commitment, rule={"permutations": 5})


# ------------------------------------------------------------------------------------------ other methods
@pytest.fixture(scope="module")
def cex(owner, digits, innocents, tmp_path_factory):
    """c-examples evidence of the owner itself, judged against two references at a verifier's alpha 0.5."""
    done = methods.protect(methods.get("c-examples")(n=30, steps=30, seed=2), copy.deepcopy(owner), digits.owner,
                           digits.meta, progress=False)
    path = tmp_path_factory.mktemp("cex") / "ev.json"
    v = ms.verify(owner, done.key, references=[innocents[0], innocents[1]], alpha=0.5, evidence=path)
    assert v.owned and v.p_value >= 1 / 3  # two references floor p at 1/3
    return done, json.loads(path.read_text())


def test_c_examples_owned_at_the_verifiers_loose_alpha_is_not_owned_at_the_checkers(cex, tmp_path):
    """p ~ 0.33, 'owned' at alpha 0.5: check with its default alpha (1e-6) refuses the claim, and says the
    reference counts are the one thing it takes from the file."""
    done, ev = cex
    report = evidence.check(ev, done.commitment)
    assert not report["agrees"] and any("under the checker's rule" in p for p in report["problems"])
    assert any("reference models' match counts" in s for s in report["not_proved"])
    assert evidence.check(ev, done.commitment, rule={"alpha": 0.5})["agrees"]
    path = tmp_path / "ev.json"
    path.write_text(json.dumps(ev))
    commitment.save(done.commitment, tmp_path / "pub.json")
    r = CliRunner().invoke(app, ["check", str(path), "--commitment", str(tmp_path / "pub.json")])
    assert r.exit_code == 1 and "does NOT hold" in r.output, r.output
    r = CliRunner().invoke(app, ["check", str(path), "--commitment", str(tmp_path / "pub.json"), "--alpha", "0.5"])
    assert r.exit_code == 3 and "holds" in r.output and "time not proven" in r.output, r.output


def test_invented_references_beyond_verifys_bound_are_refused(cex):
    done, ev = cex
    ev = json.loads(json.dumps(ev))
    n = ev["transcript"]["verifier"]["n"]
    ev["transcript"]["verifier"]["reference_counts"] = [0] * 999_999
    report = evidence.check(ev, done.commitment)
    assert not report["agrees"] and any("at most 1000" in p for p in report["problems"]), report["problems"]
    ev["transcript"]["verifier"]["reference_counts"] = [n + 5, 0]
    assert not evidence.check(ev, done.commitment)["agrees"]


def test_c_examples_transcript_of_a_few_examples_is_not_the_checkers(cex, innocents, tmp_path):
    done, _ = cex
    path = tmp_path / "ev.json"
    ms.verify(innocents[2], done.key, references=[innocents[0]], alpha=0.5, max_queries=10, evidence=path)
    report = evidence.check(path, done.commitment)
    assert not report["agrees"] and any("needs the first 30" in p for p in report["problems"]), report["problems"]
    narrowed = evidence.check(path, done.commitment, rule={"max_queries": 10})
    assert not any("needs the first" in p for p in narrowed["problems"]), narrowed["problems"]


@pytest.fixture(scope="module")
def tafa(owner, digits):
    return methods.protect(methods.get("tafa")(n=60, steps=8, seed=1), copy.deepcopy(owner), digits.owner,
                           digits.meta, progress=False)


def test_tafa_margin_rewritten_to_zero_is_refused(tafa, innocents, tmp_path):
    """A file whose own margin was rewritten to 0 (which verify refuses) is not one verify records, and
    the checker judges with its own margin (0.1 by default) anyway."""
    path = tmp_path / "ev.json"
    ms.verify(innocents[0], tafa.key, evidence=path)
    ev = json.loads(path.read_text())
    ev["transcript"]["verifier"]["margin"] = 0.0
    report = evidence.check(ev, tafa.commitment)
    assert not report["agrees"] and any("margin must be" in p for p in report["problems"]), report["problems"]
    assert report["rule"]["margin"] == 0.1
    with pytest.raises(ModelSealError, match="margin must be"):
        evidence.check(ev, tafa.commitment, rule={"margin": 0.0})


def test_tafa_check_suspect_detects_other_answers(tafa, innocents, tmp_path):
    path = tmp_path / "ev.json"
    ms.verify(tafa.models[0], tafa.key, evidence=path)
    assert evidence.check(path, tafa.commitment, suspect=tafa.models[0])["agrees"]
    report = evidence.check(path, tafa.commitment, suspect=innocents[0])
    assert not report["agrees"] and any("did not come from this suspect" in p for p in report["problems"])


# ------------------------------------------------------------------------------------------ commitments
@pytest.mark.parametrize("fmt", [1, 2])
def test_an_older_commitment_format_is_refused(tafa, fmt, tmp_path):
    """A format-1 commitment (no key tensors) once opened any TAFA key; no older format is accepted."""
    pub = {**tafa.commitment, "format": fmt}
    with pytest.raises(KeyFormatError, match=f"format {fmt}, which binds less"):
        ms.verify(tafa.models[0], tafa.key, commitment=pub)
    p = tmp_path / "old.json"
    p.write_text(json.dumps(pub))
    tafa.key.save(tmp_path / "k.seal")
    ms.models.save_model(tafa.models[0], tmp_path / "m.safetensors")
    r = CliRunner().invoke(app, ["verify", "--commitment", str(p), str(tmp_path / "k.seal"),
                                 str(tmp_path / "m.safetensors")])
    assert r.exit_code == 2 and "which binds less" in r.output, r.output


def test_a_commitment_for_another_tafa_key_is_refused(tafa, owner, digits):
    other = methods.protect(methods.get("tafa")(n=60, steps=8, seed=2), copy.deepcopy(owner), digits.owner,
                            digits.meta, progress=False)
    with pytest.raises(KeyIntegrityError, match="tensor"):
        ms.verify(owner, other.key, commitment=tafa.commitment)


def test_key_and_commitment_bind_the_same_creation_time(tafa, owner):
    pub = {**tafa.commitment, "created": "1999-01-01T00:00:00+00:00"}
    with pytest.raises(KeyIntegrityError, match="created"):
        ms.verify(owner, tafa.key, commitment=pub)
