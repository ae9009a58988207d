"""`modelseal serve` against a real, unmodified client: NVIDIA's `tritonclient.http` with its defaults.

tritonclient sends binary tensors (the binary tensor data extension) unless told otherwise and asks for
binary outputs; these tests check that it reads server and model metadata, readiness with and without a
version, and gets outputs bit-identical to the model run in-process, with binary and JSON tensors.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

from modelseal.suspect import Suspect, serve

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the dev extra")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "Zq7xK-triton-0b1c2d3e4f"


@pytest.fixture
def served(owner_cnn):
    """(tritonclient, model, app) for the owner CNN served on a free loopback port; stopped at teardown."""
    app = serve.make_app(owner_cnn, name="cnn")
    with serve.background(app) as base:
        client = httpclient.InferenceServerClient(base.removeprefix("http://"), network_timeout=30.0)
        try:
            yield client, owner_cnn, app, base
        finally:
            client.close()


def test_metadata_and_readiness(served):
    client, _, _, _ = served
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "modelseal" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("cnn") and client.is_model_ready("cnn", "1")
    assert not client.is_model_ready("cnn", "2") and not client.is_model_ready("other")
    for version in ("", "1"):
        m = client.get_model_metadata("cnn", version)
        assert m["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
        assert m["outputs"][0]["name"] == "output" and m["outputs"][0]["shape"] == [-1, 10]
    with pytest.raises(InferenceServerException, match="unknown version '2'"):
        client.get_model_metadata("cnn", "2")


@pytest.mark.parametrize("version", ["", "1"])
@pytest.mark.parametrize("how", ["defaults", "binary-output", "json-output", "json-input"])
def test_infer_is_bit_identical(served, mnist, how, version):
    client, model, app, _ = served
    x = mnist.test.x[:17].numpy()
    want = Suspect(model).predict(torch.from_numpy(x)).numpy()
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=how != "json-input")
    outputs = {"defaults": None,
               "binary-output": [httpclient.InferRequestedOutput("output")],
               "json-output": [httpclient.InferRequestedOutput("output", binary_data=False)],
               "json-input": [httpclient.InferRequestedOutput("output", binary_data=False)]}[how]
    result = client.infer("cnn", [inp], model_version=version, outputs=outputs, request_id="r1")
    got = result.as_numpy("output")
    assert got.dtype == np.float32 and got.shape == want.shape
    assert got.tobytes() == want.tobytes()  # bit-identical
    assert result.get_response()["id"] == "r1"
    assert app.state.stats["inputs"] == 17


@pytest.mark.parametrize("dtype", ["FP64", "FP16", "UINT8", "INT32", "BOOL"])
def test_exact_datatypes_are_converted(served, mnist, dtype):
    client, model, _, _ = served
    x32 = (mnist.test.x[:3].numpy() > 0.5).astype(np.float32)  # 0/1 values: exact in every datatype
    want = Suspect(model).predict(torch.from_numpy(x32)).numpy()
    np_dtype = {"FP64": np.float64, "FP16": np.float16, "UINT8": np.uint8, "INT32": np.int32, "BOOL": bool}[dtype]
    inp = httpclient.InferInput("input", list(x32.shape), dtype)
    inp.set_data_from_numpy(x32.astype(np_dtype))
    got = client.infer("cnn", [inp]).as_numpy("output")
    assert got.tobytes() == want.tobytes()


def test_inexact_and_wrong_requests_are_refused_with_json_errors(served, mnist):
    client, _, app, base = served
    x = mnist.test.x[:2].numpy().astype(np.float64) + 1e-12  # not float32 values
    inp = httpclient.InferInput("input", list(x.shape), "FP64")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException, match="cannot hold exactly"):
        client.infer("cnn", [inp])
    bad = httpclient.InferInput("pixels", [1, 1, 28, 28], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
    with pytest.raises(InferenceServerException, match="unknown input 'pixels'"):
        client.infer("cnn", [bad])
    good = httpclient.InferInput("input", [1, 1, 28, 28], "FP32")
    good.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
    with pytest.raises(InferenceServerException, match="unknown output 'probs'"):
        client.infer("cnn", [good], outputs=[httpclient.InferRequestedOutput("probs")])
    with pytest.raises(InferenceServerException, match="unknown version"):
        client.infer("cnn", [good], model_version="7")
    assert app.state.stats["inputs"] == 0
    # Unrouted paths and wrong methods answer JSON errors too, which is what clients parse.
    for method, path, status in (("GET", "/nope", 404), ("DELETE", "/v2/models/cnn", 405),
                                 ("GET", "/v2/models/cnn/infer", 405)):
        req = urllib.request.Request(base + path, method=method)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == status
        assert "error" in json.loads(e.value.read())


def test_token_guards_the_model_for_tritonclient(owner_cnn):
    app = serve.make_app(owner_cnn, token=TOKEN)
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(serve.background(app))
        client = httpclient.InferenceServerClient(base.removeprefix("http://"))
        stack.callback(client.close)
        assert client.is_server_live() and client.get_server_metadata()["name"] == "modelseal"
        with pytest.raises(InferenceServerException, match="bearer token"):
            client.get_model_metadata("model")
        meta = client.get_model_metadata("model", headers={"Authorization": f"Bearer {TOKEN}"})
        assert meta["name"] == "model"


def test_modelseal_client_speaks_binary_to_its_own_server(served, mnist, monkeypatch):
    _, model, app, base = served
    x = mnist.test.x[:9]
    for binary in (None, False):
        s = Suspect.load(base + "/v2/models/cnn/versions/1", binary=binary)
        assert s._backend.binary is (binary is None)
        assert s.predict(x).numpy().tobytes() == Suspect(model).predict(x).numpy().tobytes()
