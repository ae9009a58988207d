"""An ownership claim is a claim about history (issue 35): secrets that cannot be re-made after the suspect,
trusted time (RFC 3161, against a real TSA: OpenSSL's `openssl ts -reply` behind HTTP on 127.0.0.1), and
verdicts that say what they do not prove."""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import modelseal as ms
from modelseal import commitment, evidence, methods
from modelseal import timestamp as tsmod
from modelseal.cli import app
from modelseal.errors import KeyIntegrityError
from modelseal.keys import Key
from modelseal.methods import trigger_set as ts
from modelseal.methods.deepmarks import DeepMarks, decide_projection
from modelseal.tensorfile import state_sha256
from tsa import TSA

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
runner = CliRunner()


@pytest.fixture(scope="module")
def owner(digits):
    m = ms.models.build("mlp", digits.meta, seed=0)
    ms.train.fit(m, digits.owner, epochs=5, seed=0, progress=False)
    return m


@pytest.fixture(scope="module")
def innocents(digits):
    """Independent models of two architectures (attacker split, their own seeds)."""
    out = []
    for arch, seed in (("cnn", 71), ("mlp", 72)):
        m = ms.models.build(arch, digits.meta, seed=seed)
        ms.train.fit(m, digits.attacker, epochs=4, seed=seed, progress=False)
        out.append(m)
    return out


@pytest.fixture(scope="module")
def wm(owner, digits):
    return methods.protect(methods.get("trigger-set")(n=20, seed=5), copy.deepcopy(owner), digits.owner,
                           progress=False)


@pytest.fixture(scope="module")
def tsa(tmp_path_factory):
    return TSA(tmp_path_factory.mktemp("tsa"))


def _write(tmp_path, done, name="wm"):
    key, pub = tmp_path / f"{name}.seal", tmp_path / f"{name}.public.json"
    done.key.save(key, force=True)
    commitment.save(done.commitment, pub, force=True)
    return key, pub


# ------------------------------------------------------------------------------------------ DeepMarks
@pytest.fixture(scope="module")
def dm(owner, digits):
    return methods.protect(DeepMarks(users=7, seed=3), copy.deepcopy(owner), digits.owner, progress=False)


def _solved(key: Key, innocent) -> Key:
    """The closed-form forgery: X plus a rank-1 correction so the innocent's w-bar projects onto user 0's code."""
    w = DeepMarks().aligned_channel_means(innocent, key)[0].float()
    x, u = key.tensors["X"], key.tensors["U"]
    target = u @ (2.0 * key.tensors["codebook"][0].float() - 1.0)
    forged_x = x + torch.outer(target - x @ w, w) / float(w @ w)
    return Key("deepmarks", params=key.params, signature=key.signature,
               tensors={**key.tensors, "X": forged_x.contiguous()}, created=key.created)


def test_a_deepmarks_key_with_a_solved_projection_is_refused(dm, innocents, tmp_path):
    innocent = innocents[1]  # the MLP: the owner's architecture, so the carrier layer fits
    forged = _solved(dm.key, innocent)
    # the forgery is real: with the solved X the innocent decodes to user 0 at p ~ 0
    w = DeepMarks().aligned_channel_means(innocent, forged)[0]
    res = decide_projection((forged.tensors["X"].double() @ w.double()).numpy(), forged.tensors["U"].double().numpy(),
                            forged.tensors["codebook"].numpy(), forged.params, 1e-6)
    assert res["accused"] == [0] and res["p_value"] < 1e-12
    # ... and every path refuses it: trace, commit, check
    with pytest.raises(KeyIntegrityError, match="secret X is not the one its committed nonce"):
        ms.trace(innocent, forged)
    with pytest.raises(KeyIntegrityError, match="secret X"):
        methods.commit(forged)
    forged.save(tmp_path / "forged.seal")
    r = runner.invoke(app, ["commit", str(tmp_path / "forged.seal"), "--out", str(tmp_path / "f.json")])
    assert r.exit_code == 2 and "secret X" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    # evidence written by hand for the forged key (verify would refuse to write it)
    honest = tmp_path / "ev.json"
    assert ms.trace(dm.models[2], dm.key, evidence=honest).accused == [2]
    ev = json.loads(honest.read_text())
    ev["opened"]["X"] = evidence._enc(forged.tensors["X"])
    ev["transcript"]["answers"] = evidence._enc(w.float())
    pub = commitment.make(forged, declared=methods.declared("deepmarks"))
    ev["commitment"] = pub
    report = evidence.check(ev, pub)
    assert not report["agrees"] and any("secret X is not the one" in p for p in report["problems"])
    (tmp_path / "forged-ev.json").write_text(json.dumps(ev))
    commitment.save(pub, tmp_path / "forged.public.json")
    r = runner.invoke(app, ["check", str(tmp_path / "forged-ev.json"), "--commitment",
                            str(tmp_path / "forged.public.json")])
    assert r.exit_code == 1 and "secret X is not the one" in r.output, r.output
    # the honest key still traces its users and commits
    assert ms.trace(dm.models[4], dm.key).accused == [4]


def test_deepmarks_secrets_are_derived_and_bound_to_the_owner_model(dm, owner):
    key = dm.key
    assert key.params["secrets_rule"] and key.signature["model_sha256"] == state_sha256(owner.state_dict())
    from modelseal.methods.deepmarks import derive_secrets, secrets_spec

    x, u = derive_secrets(commitment.nonce_of(key), secrets_spec(key.params, key.signature))
    assert torch.equal(x, key.tensors["X"]) and torch.equal(u, key.tensors["U"])
    assert torch.allclose(u.T @ u, torch.eye(u.shape[1]), atol=1e-5)
    # another owner model (same architecture) derives other secrets
    other = dict(key.signature, model_sha256="0" * 64)
    x2, _ = derive_secrets(commitment.nonce_of(key), secrets_spec(key.params, other))
    assert not torch.allclose(x2, x)


# ------------------------------------------------------------------------------------------ trigger set
def test_a_free_text_beacon_is_refused(wm, tmp_path):
    images, _, nonces = ts.key_tensors(wm.key)
    root = ts.trigger_root(ts.trigger_commitments(images.numpy(), nonces.numpy()), 10, "drand round 123")
    key = Key("trigger-set", params={**wm.key.params, "beacon": "drand round 123"}, signature=wm.key.signature,
              tensors={**wm.key.tensors, "labels": torch.from_numpy(ts.derive_labels(root, len(images), 10))})
    with pytest.raises(KeyIntegrityError, match="free-text beacon"):
        ms.verify(wm.models[0], key)
    with pytest.raises(KeyIntegrityError, match="free-text beacon"):
        methods.commit(key)
    pub = {**wm.commitment, "beacon": "anything"}
    with pytest.raises(KeyIntegrityError):
        ms.verify(wm.models[0], wm.key, commitment=pub)
    model = tmp_path / "m.safetensors"
    ms.models.save_model(wm.models[0], model)
    r = runner.invoke(app, ["watermark", "embed", str(model), "--data", "digits", "--set", "beacon=x", "--out",
                            str(tmp_path / "o.safetensors"), "--key", str(tmp_path / "k.seal")])
    assert r.exit_code == 2 and "beacon" in r.output, r.output


def _grind(innocent, images: torch.Tensor, classes: int = 10, looks: int = 5, need: int = 4,
           tries: int = 200_000) -> tuple[np.ndarray, np.ndarray, int]:
    """The dishonest owner's minute: fresh nonces until the derived labels of the first `looks` triggers in
    committed order agree with the innocent model on at least `need` of them."""
    want = innocent(images).argmax(1).numpy()
    rng = np.random.default_rng(123)
    for t in range(tries):
        nonces = rng.integers(0, 256, size=(len(images), ts.NONCE_BYTES), dtype=np.uint8)
        root = ts.trigger_root(ts.trigger_commitments(images.numpy(), nonces), classes, "")
        labels = ts.derive_labels(root, len(images), classes)
        first = ts.committed_order(root, len(images))[:looks]
        if (labels[first] == want[first]).sum() >= need:
            return nonces, labels, t + 1
    raise AssertionError("grinding found nothing")


@pytest.fixture(scope="module")
def ground(wm, innocents, tmp_path_factory):
    """A key ground after seeing the innocent CNN, back-dated to 2019, its evidence and commitment on disk."""
    innocent = innocents[0]
    images = wm.key.tensors["images"][:8]
    with torch.no_grad():
        nonces, labels, tries = _grind(innocent.eval(), images)
    key = Key("trigger-set", params={**wm.key.params, "n": 8}, signature={"input_shape": [1, 8, 8],
                                                                           "output_size": 10},
              tensors={"images": images, "labels": torch.from_numpy(labels), "nonces": torch.from_numpy(nonces)},
              created="2019-01-01T00:00:00+00:00")
    folder = tmp_path_factory.mktemp("ground")
    v = ms.verify(innocent, key, alpha=1e-3, evidence=folder / "ev.json")
    assert v.owned, v.summary()  # the grinding works: an innocent model 'owned'
    commitment.save(methods.commit(key), folder / "pub.json")
    ms.models.save_model(innocent, folder / "innocent.safetensors")
    return folder, tries, v


def test_a_ground_backdated_key_gets_time_not_proven_and_a_nonzero_exit(ground):
    folder, tries, v = ground
    assert tries < 200_000 and "time not proven" in v.details["time"]["line"]
    for extra in ([], ["--suspect", str(folder / "innocent.safetensors")]):
        r = runner.invoke(app, ["check", str(folder / "ev.json"), "--commitment", str(folder / "pub.json"),
                                "--alpha", "1e-3", *extra])
        assert r.exit_code == 3, r.output
        assert "the evidence holds" in r.output
        assert "time not proven: 'created' is the owner's own statement" in r.output
    report = evidence.check(folder / "ev.json", folder / "pub.json", rule={"alpha": 1e-3})
    assert report["agrees"] and report["outcome"] == "time-not-proven"


def test_a_ground_key_stamped_now_is_not_older_than_the_suspect(ground, tsa, tmp_path):
    folder, _, _ = ground
    with tsa.serve() as url:
        r = runner.invoke(app, ["timestamp", str(folder / "pub.json"), "--tsa", url, "--out",
                                str(tmp_path / "pub.tsr")])
    assert r.exit_code == 0, r.output
    yesterday = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)).date().isoformat()
    r = runner.invoke(app, ["check", str(folder / "ev.json"), "--commitment", str(folder / "pub.json"), "--alpha",
                            "1e-3", "--timestamp", str(tmp_path / "pub.tsr"), "--tsa-cert", str(tsa.ca_pem),
                            "--suspect-since", yesterday])
    assert r.exit_code == 4 and "order not proven" in r.output and "time: commitment existed by" in r.output, r.output


# ------------------------------------------------------------------------------------------ RFC 3161 round trip
@pytest.fixture(scope="module")
def honest(wm, tsa, tmp_path_factory):
    """An honest key's commitment, stamped by the real TSA, and an evidence file of the marked model."""
    folder = tmp_path_factory.mktemp("honest")
    key, pub = _write(folder, wm)
    with tsa.serve() as url:
        r = runner.invoke(app, ["timestamp", str(pub), "--tsa", url, "--tsa-cert", str(tsa.ca_pem), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["verified"] and info["time"]["proven"] and (folder / "wm.public.tsr").is_file()
    ms.models.save_model(wm.models[0], folder / "marked.safetensors")
    r = runner.invoke(app, ["verify", str(key), str(folder / "marked.safetensors"), "--commitment", str(pub),
                            "--tsa-cert", str(tsa.ca_pem), "--evidence", str(folder / "ev.json")])
    assert r.exit_code == 0 and "OWNED" in r.output and "time: commitment existed by" in r.output, r.output
    return folder


def _check(folder, *extra):
    return runner.invoke(app, ["check", str(folder / "ev.json"), "--commitment", str(folder / "wm.public.json"),
                               *extra])


def test_rfc3161_round_trip_orders_the_claim(honest, tsa):
    tomorrow = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).isoformat()
    r = _check(honest, "--tsa-cert", str(tsa.ca_pem), "--suspect-since", tomorrow)
    assert r.exit_code == 0 and "time: commitment existed by" in r.output and "order: the commitment existed" in \
        r.output, r.output
    r = _check(honest, "--tsa-cert", str(tsa.ca_pem), "--suspect-since", tomorrow, "--suspect",
               str(honest / "marked.safetensors"))
    assert r.exit_code == 0, r.output
    earlier = "2020-01-01"
    r = _check(honest, "--tsa-cert", str(tsa.ca_pem), "--suspect-since", earlier)
    assert r.exit_code == 4 and "not before the suspect was first seen" in r.output, r.output
    r = _check(honest, "--tsa-cert", str(tsa.ca_pem))  # no --suspect-since: order not shown
    assert r.exit_code == 4 and "--suspect-since" in r.output, r.output
    r = _check(honest, "--suspect-since", tomorrow)  # token beside, but no trusted certificate
    assert r.exit_code == 3 and "no trusted TSA certificate" in r.output, r.output
    report = evidence.check(honest / "ev.json", honest / "wm.public.json", tsa_certs=[tsa.ca_pem],
                            suspect_since=tomorrow)
    assert report["outcome"] == "proven" and report["time"]["tsa"] == "modelseal test TSA"


def _one_line_refusal(r, match: str) -> None:
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], r.output


def test_bad_tokens_are_refused_with_one_line(honest, wm, tsa, tmp_path):
    tomorrow = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)).isoformat()
    args = ["--tsa-cert", str(tsa.ca_pem), "--suspect-since", tomorrow]
    # a token over another digest: another commitment's
    other = {**wm.commitment, "declared": {"alpha": 0.5}}
    commitment.save(other, tmp_path / "other.json")
    with tsa.serve() as url:
        (tmp_path / "other.tsr").write_bytes(tsmod.fetch(url, other))
    _one_line_refusal(_check(honest, *args, "--timestamp", str(tmp_path / "other.tsr")), "another digest")
    # a tampered token: one bit of the stamped time (inside the signed TSTInfo)
    token = bytearray((honest / "wm.public.tsr").read_bytes())
    at = token.find(b"Z", token.find(b"\x18\x0f"))  # GeneralizedTime YYYYMMDDhhmmssZ
    token[at - 1] ^= 0x01
    (tmp_path / "tampered.tsr").write_bytes(bytes(token))
    _one_line_refusal(_check(honest, *args, "--timestamp", str(tmp_path / "tampered.tsr")), "tampered")
    # a certificate the checker does not trust
    stranger = TSA(tmp_path / "stranger", name="another TSA")
    _one_line_refusal(_check(honest, "--tsa-cert", str(stranger.ca_pem), "--suspect-since", tomorrow), "not trusted")
    # a token signed with an expired TSA certificate
    expired = TSA(tmp_path / "expired", name="expired TSA", expired=True)
    with expired.serve() as url:
        (tmp_path / "expired.tsr").write_bytes(tsmod.fetch(url, wm.commitment))
    r = _check(honest, "--tsa-cert", str(expired.ca_pem), "--suspect-since", tomorrow, "--timestamp",
               str(tmp_path / "expired.tsr"))
    _one_line_refusal(r, "expired")
    # garbage and a missing file
    (tmp_path / "junk.tsr").write_bytes(b"\x30\x03junk")
    _one_line_refusal(_check(honest, *args, "--timestamp", str(tmp_path / "junk.tsr")), "token")
    _one_line_refusal(_check(honest, *args, "--timestamp", str(tmp_path / "none.tsr")), "no such file")


def test_timestamp_command_refuses_a_bad_tsa_and_keeps_files(honest, tmp_path):
    pub = honest / "wm.public.json"
    _one_line_refusal(runner.invoke(app, ["timestamp", str(pub), "--tsa", "ftp://example"]), "http")
    _one_line_refusal(runner.invoke(app, ["timestamp", str(pub), "--tsa", "http://127.0.0.1:9/tsa", "--timeout",
                                          "2", "--out", str(tmp_path / "x.tsr")]), "could not be reached")
    # the token beside the commitment exists: not overwritten without --force
    r = runner.invoke(app, ["timestamp", str(pub), "--tsa", "http://127.0.0.1:9/tsa"])
    assert r.exit_code == 2 and "--force" in r.output, r.output


def test_verify_says_time_not_proven_without_a_token(wm):
    v = ms.verify(wm.models[0], wm.key)
    assert v.owned and v.notes() == ["time not proven: 'created' is the owner's own statement (no commitment given)"]
    v = ms.verify(wm.models[0], wm.key, commitment=wm.commitment)
    assert "no RFC 3161 token" in v.notes()[0]


# ------------------------------------------------------------------------------------------ secrets and seeds
def test_seeds_are_fresh_unless_given_and_a_seeded_secret_warns(owner, tmp_path, fresh_seeds):
    assert methods.get("trigger-set")().seed != methods.get("trigger-set")().seed
    assert methods.get("tafa")(seed=4).seed == 4
    model = tmp_path / "owner.safetensors"
    ms.models.save_model(owner, model)
    keys = []
    for i, extra in enumerate(([], [], ["--seed", "1"])):
        r = runner.invoke(app, ["fingerprint", "extract", str(model), "--method", "tafa", "--set", "n=8", "--data",
                                "digits", "--key", str(tmp_path / f"k{i}.seal"), *extra])
        assert r.exit_code == 0, r.output
        assert ("anyone who knows the seed can re-make the key" in r.output) == bool(extra), r.output
        keys.append(Key.load(tmp_path / f"k{i}.seal"))
    assert keys[0].params["seed"] != keys[1].params["seed"] and keys[0].digest() != keys[1].digest()
    assert keys[2].params["seed"] == 1


def test_the_commitment_binds_the_model_the_key_was_made_for(wm, owner):
    assert wm.key.signature["model_sha256"] == state_sha256(wm.models[0].state_dict())
    assert wm.commitment["signature"]["model_sha256"] == wm.key.signature["model_sha256"]
    diff = methods.commitment_differences(wm.key, {**wm.commitment, "signature": {
        **wm.commitment["signature"], "model_sha256": state_sha256(owner.state_dict())}})
    assert any("model_sha256" in d for d in diff)


# ------------------------------------------------------------------------------------------ what verdicts prove
def test_fingerprint_and_lineage_matches_say_relatedness_not_direction(owner, digits, innocents, wm, tmp_path):
    done = methods.protect(methods.get("tafa")(n=30, seed=2), owner, input_spec=digits.meta, progress=False)
    v = ms.verify(owner, done.key, evidence=tmp_path / "ev.json")
    assert v.owned and "not which came first" in v.details["relatedness"]
    assert any("related, not proven stolen" in line for line in v.notes())
    assert "not which came first" in v.to_dict()["details"]["relatedness"]  # --json carries it
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert "not which came first" in ev["result"]["relatedness"]  # so does the evidence
    assert any("not which came first" in line for line in evidence.check(ev, done.commitment)["not_proved"])
    assert "relatedness" not in ms.verify(innocents[1], done.key).details  # not owned: no line
    assert "relatedness" not in ms.verify(wm.models[0], wm.key).details  # a watermark keeps its wording
    from modelseal.lineage import lineage

    lv = lineage(owner, copy.deepcopy(owner), permutations=999)
    assert lv.owned and "relatedness" in lv.details and not lv.details["time"]["proven"]


def test_check_takes_the_suspect_options_verify_takes(honest, tsa):
    r = _check(honest, "--suspect", str(honest / "marked.safetensors"), "--max-queries", "1000")
    assert r.exit_code == 3 and "the evidence holds" in r.output, r.output  # no --tsa-cert: time not proven
    _one_line_refusal(_check(honest, "--reshape"), "--suspect")
