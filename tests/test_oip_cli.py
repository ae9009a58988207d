"""`modelseal verify` against remote suspects: the http options, reshaping, budgets and the token in messages."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import modelseal as ms
from fault_server import FaultServer
from modelseal.cli import app
from modelseal.suspect import Suspect, serve

runner = CliRunner()
TOKEN = "Zq7xK-cli-5e6f7a8b9c0d"


@pytest.fixture(scope="module")
def digits_key(tmp_path_factory):
    """A small digits MLP, its tafa key on disk, and the model wrapped to take flat [N, 64] inputs."""
    d = tmp_path_factory.mktemp("oip-cli")
    data = ms.data.load("digits", seed=0)
    model = ms.models.build("mlp", data.meta, seed=0)
    ms.train.fit(model, data.owner, epochs=3, seed=0, progress=False)
    key = ms.methods.get("tafa")(n=30).extract(model.eval(), data.meta)
    key.save(d / "fp.seal")
    flat = Suspect(torch.nn.Sequential(torch.nn.Unflatten(1, (1, 8, 8)), model), input_shape=(64,))
    return d, flat


@pytest.fixture
def flat_server(digits_key):
    _, flat = digits_key
    application = serve.make_app(flat)
    with serve.background(application) as base:
        yield base + "/v2/models/model", application


def _verify(*args, env: dict | None = None):
    return runner.invoke(app, ["verify", *map(str, args)], env=env)


def test_verify_with_http_options_and_reshape(digits_key, flat_server):
    d, _ = digits_key
    url, application = flat_server
    r = _verify(d / "fp.seal", url)
    assert r.exit_code == 2 and "--reshape would send" in r.output and "(64,)" in r.output
    r = _verify(d / "fp.seal", url, "--reshape", "--timeout", "20", "--retries", "1", "--rate-limit", "200",
                "--max-batch", "32", "--max-queries", "1000", "--json")
    assert r.exit_code == 0, r.output
    v = json.loads(r.stdout)
    assert v["owned"] and v["queries"] == application.state.stats["inputs"] == 150
    assert application.state.stats["requests"] >= 150 // 32


def test_verify_refuses_bad_option_values_and_file_suspects(digits_key, flat_server):
    d, _ = digits_key
    url, application = flat_server
    for flag, value, msg in (("--timeout", "0", "timeout must be"), ("--retries", "-1", "retries must be"),
                             ("--rate-limit", "0", "rate_limit must be"), ("--max-batch", "0", "max_batch must be"),
                             ("--max-queries", "-5", "max_queries must be")):
        r = _verify(d / "fp.seal", url, "--reshape", flag, value)
        assert r.exit_code == 2 and msg in r.output, (flag, r.output)
    ms.models.save_model(ms.models.build("mlp", ms.data.load("digits").meta), d / "m.safetensors", force=True)
    r = _verify(d / "fp.seal", d / "m.safetensors", "--timeout", "3", "--output-name", "x", "--input-name", "y")
    assert r.exit_code == 2 and "--timeout, --input-name, --output-name apply to http(s) suspects only" in r.output
    assert application.state.stats["inputs"] == 0


def test_verify_label_only_output_name_and_budget(digits_key, flat_server):
    d, _ = digits_key
    url, application = flat_server
    r = _verify(d / "fp.seal", url, "--reshape", "--label-only")
    assert r.exit_code == 2 and "raw outputs" in r.output
    r = _verify(d / "fp.seal", url, "--reshape", "--output-name", "probs")
    assert r.exit_code == 2 and "no output 'probs'" in r.output and "--output-name" in r.output
    r = _verify(d / "fp.seal", url, "--reshape", "--input-name", "pixels")
    assert r.exit_code == 2 and "no input 'pixels'" in r.output and "--input-name" in r.output
    assert application.state.stats["inputs"] == 0
    r = _verify(d / "fp.seal", url, "--reshape", "--input-name", "input", "--output-name", "output", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["owned"], r.output
    application.state.stats["inputs"] = 0
    r = _verify(d / "fp.seal", url, "--reshape", "--max-queries", "40", "--json")
    assert r.exit_code == 0, r.output
    v = json.loads(r.stdout)
    assert not v["judged"] and "only 40 queries" in v["details"]["not_judged"]
    assert application.state.stats["inputs"] == 0  # said before anything was sent


def test_cli_messages_never_show_the_token(digits_key):
    d, _ = digits_key
    with FaultServer(["500"], input_shape=(1, 8, 8), outputs=10) as server:
        r = _verify(d / "fp.seal", server.url, "--retries", "1", "--timeout", "5",
                    env={"MODELSEAL_TOKEN": TOKEN})
        assert r.exit_code == 2 and "HTTP 500" in r.output, r.output
        assert server.auth_seen and all(a == f"Bearer {TOKEN}" for a in server.auth_seen)
        assert TOKEN[:4] not in r.output
        r = _verify(d / "fp.seal", server.url, "--token-env", "OTHER_VAR", "--retries", "0",
                    env={"OTHER_VAR": TOKEN, "MODELSEAL_TOKEN": ""})
        assert r.exit_code == 2 and TOKEN[:4] not in r.output
