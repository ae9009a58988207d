"""The guard inside a real MLServer (issue 38, item 3): `modelseal.guard_mlserver.GuardRuntime` gives the same
answers and logs the same clients as `make_app(answer_hook=Guard.serve_hook)`.

MLServer runs as a subprocess from its own virtual environment (`.venv-mlserver`, see test_oip_mlserver.py),
bound to 127.0.0.1 on free ports, and is stopped (by its PID) at teardown. It serves one model twice: named
by the request's bearer token (forwarded headers) and with a per-model client from its settings.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mlserver_proc
import modelseal as ms
from modelseal import guard as g
from modelseal.suspect import open_source

pytestmark = pytest.mark.slow  # MLServer start-up: the module took 20 s on two shared cores



@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    mlserver_proc.require()
    data = ms.data.load("digits", seed=0)
    owner = ms.models.build("cnn", data.meta, seed=0)
    ms.train.fit(owner, data.owner, epochs=3, seed=0, progress=False)
    owner.eval()
    key = g.GuardKey.new(10, rate=0.1)
    repo = tmp_path_factory.mktemp("mlserver")
    for name, client in (("guarded", None), ("per-model", "customer-7")):
        folder = repo / name
        (folder / "logs").mkdir(parents=True)
        ms.models.save_model(owner, folder / "model.safetensors")
        key.save(folder / "guard.seal")
        extra = {"guard_key": "./guard.seal", "guard_log": "./logs", **({"client": client} if client else {})}
        (folder / "model-settings.json").write_text(json.dumps({
            "name": name, "implementation": "modelseal.guard_mlserver.GuardRuntime",
            "parameters": {"uri": "./model.safetensors", "extra": extra},
            "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 8, 8]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]}))
    with mlserver_proc.running(repo, ["guarded", "per-model"]) as base:
        yield base, repo, owner, key, data


def _asked(url: str, x: torch.Tensor, token: str | None) -> np.ndarray:
    with pytest.MonkeyPatch.context() as mp:
        if token is None:
            mp.delenv("MODELSEAL_TOKEN", raising=False)
        else:
            mp.setenv("MODELSEAL_TOKEN", token)
        return open_source(url).predict(x).numpy()


def test_mlserver_guard_answers_and_logs_as_make_app(setup, tmp_path):
    from modelseal.suspect.serve import background, make_app

    base, repo, owner, key, data = setup
    x = data.test.x[:200]
    guard = g.Guard(key, tmp_path)
    app = make_app(owner, answer_hook=guard.serve_hook)
    with background(app) as local:
        for token in ("alice-token", "bob-token"):
            remote = _asked(f"{base}/v2/models/guarded", x, token)
            here = _asked(f"{local}/v2/models/model", x, token)
            assert np.allclose(remote, here, atol=1e-5), token
            assert (remote.argmax(1) != owner(x).argmax(1).numpy()).any()  # some answers were changed
            cid = g.client_id(token)
            ours, theirs = g.read_log(repo / "guarded" / "logs" / f"{cid}.log.jsonl"), g.read_log(guard.log_path(cid))
            assert [(e["canon"], e["label"]) for e in ours] == [(e["canon"], e["label"]) for e in theirs]
    assert "alice-token" not in "".join(p.read_text() for p in (repo / "guarded" / "logs").iterdir())
    # a student-free check of the verdict path: the owner itself answers the keyed labels at chance only
    v = g.verify(owner, key, repo / "guarded" / "logs" / f"{g.client_id('alice-token')}.log.jsonl")
    assert not v.owned


def test_without_a_token_the_per_model_client_is_logged(setup):
    base, repo, _, _, data = setup
    _asked(f"{base}/v2/models/per-model", data.test.x[:100], None)
    assert (repo / "per-model" / "logs" / "customer-7.log.jsonl").exists()
    _asked(f"{base}/v2/models/per-model", data.test.x[:100], "carol-token")
    assert (repo / "per-model" / "logs" / f"{g.client_id('carol-token')}.log.jsonl").exists()
