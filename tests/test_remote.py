"""Remote suspects over the Open Inference Protocol, against real uvicorn servers on 127.0.0.1.

Every server here runs in a background thread on a free loopback port (`modelseal.suspect.serve.background`)
and stops in teardown; misbehaving servers are small Starlette apps defined below.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch

import modelseal as ms
from modelseal import methods
from modelseal.errors import ModelSealError, SuspectError
from modelseal.suspect import QueryBudgetExceeded, Suspect, serve
from modelseal.suspect.remote import RemoteBackend

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from starlette.applications import Starlette  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

BLACK_BOX = ["trigger-set", "c-examples", "tafa"]
LABEL_METHODS = ["trigger-set", "c-examples"]
TOKEN = "tok-9f3a1c77e0b54d2e8a61"  # a fake secret; must never show up anywhere


def _method_available(name: str) -> bool:
    mod = methods._MODULES[name]
    try:
        return importlib.util.find_spec(mod) is not None
    except ModuleNotFoundError:
        return False


def _need(name: str) -> None:
    if not _method_available(name):
        pytest.skip(f"method {name} is not implemented yet ({methods._MODULES[name]} missing)")


@pytest.fixture
def servers():
    """start(app) -> base URL of a live server; all servers stop at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda app, **kw: stack.enter_context(serve.background(app, **kw))


def _url(base: str, name: str = "model") -> str:
    return f"{base}/v2/models/{name}"


# ---------------------------------------------------------------------------- models and keys
@pytest.fixture(scope="module")
def other_mlp(mnist):
    """An independent model (other architecture, other data), trained briefly: the innocent suspect."""
    m = ms.models.build("mlp", mnist.meta, seed=7)
    ms.train.fit(m, mnist.attacker.subset(1000, seed=0), epochs=2, seed=7, progress=False)
    return m.eval()


@pytest.fixture(scope="module")
def keyed(mnist, _owner_cnn):
    """name -> (owner model to serve, key); built once per method, lazily."""
    import copy

    cache: dict[str, tuple[torch.nn.Module, ms.Key]] = {}

    def get(name: str):
        _need(name)
        if name not in cache:
            owner = copy.deepcopy(_owner_cnn)
            cls = methods.get(name)
            if name == "trigger-set":
                data = mnist.owner.subset(500, seed=0)
                marked, key = cls(n=20, extra_epochs=0, k_per_batch=4).embed(owner, data)
                cache[name] = (marked.eval(), key)
            elif name == "c-examples":
                cache[name] = (owner, cls(variant="c", n=30, steps=30).extract(owner, mnist.meta))
            else:
                cache[name] = (owner, cls(n=30).extract(owner, mnist.meta))
        return cache[name]

    return get


def _same(a: ms.Verdict, b: ms.Verdict) -> None:
    assert a.owned == b.owned
    assert a.queries == b.queries
    assert a.score == pytest.approx(b.score, rel=1e-6, abs=1e-9)
    assert a.p_value == pytest.approx(b.p_value, rel=1e-6, abs=1e-300)


@pytest.mark.slow  # builds one key per method (trains trigger-set, searches c-examples/tafa) once per module
@pytest.mark.parametrize("which", ["owner", "independent"])
@pytest.mark.parametrize("name", BLACK_BOX)
def test_http_verdict_equals_in_process(name, which, keyed, other_mlp, servers):
    owner, key = keyed(name)
    model = owner if which == "owner" else other_mlp
    local = ms.verify(Suspect(model), key)
    app = serve.make_app(model)
    remote_suspect = Suspect.load(_url(servers(app)))
    remote = ms.verify(remote_suspect, key)
    _same(local, remote)
    if which == "owner":
        # c-examples without the verifier's references is never judged (so never owned), remote or not
        assert remote.owned or (name == "c-examples" and not remote.judged)
    assert remote_suspect.module is None
    assert app.state.stats["inputs"] == remote.queries == remote_suspect.queries


@pytest.mark.parametrize("name", LABEL_METHODS)
def test_label_only_endpoint_gives_same_verdict(name, keyed, servers):
    owner, key = keyed(name)
    local = ms.verify(Suspect(owner), key)
    s = Suspect.load(_url(servers(serve.make_app(owner, label_only=True))))
    assert s.label_only
    _same(local, ms.verify(s, key))


def test_label_only_endpoint_refuses_output_methods(keyed, owner_cnn, mnist, servers):
    s = Suspect.load(_url(servers(serve.make_app(owner_cnn, label_only=True))))
    x = mnist.test.x[:10]
    assert torch.equal(s.labels(x), Suspect(owner_cnn).labels(x))
    assert s.predict(x).dtype == torch.int64
    with pytest.raises(SuspectError, match="raw outputs"):
        s.require_outputs("tafa")
    if _method_available("tafa"):
        _, key = keyed("tafa")
        with pytest.raises(SuspectError, match="raw outputs"):
            ms.verify(s, key)


def test_label_only_detected_from_response_without_metadata(servers):
    app = _fake_app(lambda n, body: _ok(n, dtype="INT64", shape=[n], data=[3] * n), metadata=False)
    s = Suspect.load(_url(servers(app)))
    assert s.input_shape is None and not s.label_only
    assert s.labels(torch.zeros(4, 2)).tolist() == [3, 3, 3, 3]
    assert s.label_only


# ---------------------------------------------------------------------------- query budget
def test_query_budget_is_never_exceeded(owner_cnn, mnist, servers):
    app = serve.make_app(owner_cnn)
    s = Suspect.load(_url(servers(app)), max_queries=50, batch_size=16)
    s.predict(mnist.test.x[:40])
    with pytest.raises(QueryBudgetExceeded, match="budget of 50"):
        s.predict(mnist.test.x[:20])
    s.predict(mnist.test.x[:10])
    assert s.remaining() == 0
    assert app.state.stats["inputs"] == 50 == s.queries


@pytest.mark.parametrize("name", BLACK_BOX)
def test_methods_stay_within_budget(name, keyed, servers):
    owner, key = keyed(name)
    app = serve.make_app(owner)
    s = Suspect.load(_url(servers(app)), max_queries=7, batch_size=4)
    try:
        v = ms.verify(s, key)
    except SuspectError:
        pass
    else:
        assert v.queries <= 7
    assert app.state.stats["inputs"] <= 7


# ---------------------------------------------------------------------------- misbehaving servers
_META = {"name": "model", "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
         "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]}


def _ok(n: int, dtype: str = "FP32", shape: list | None = None, data: list | None = None) -> Response:
    shape = [n, 3] if shape is None else shape
    data = [0.5] * int(np.prod(shape)) if data is None else data
    return JSONResponse({"outputs": [{"name": "output", "datatype": dtype, "shape": shape, "data": data}]})


def _fake_app(infer, metadata: bool = True) -> Starlette:
    """A v2-looking app whose infer answer is `infer(batch, body)`; counts calls in app.state.calls."""
    calls: list[int] = []
    bodies: list[dict] = []

    async def meta(request):
        return JSONResponse(_META) if metadata else Response("no metadata here", status_code=501)

    async def do_infer(request):
        body = json.loads(await request.body())
        n = body["inputs"][0]["shape"][0]
        calls.append(n)
        bodies.append(body)
        out = infer(n, body)
        if hasattr(out, "__await__"):
            out = await out
        return out

    app = Starlette(routes=[Route("/v2/models/model", meta), Route("/v2/models/model/infer", do_infer,
                                                                  methods=["POST"])])
    app.state.calls = calls
    app.state.bodies = bodies
    return app


def test_timeout_ends_in_clear_error_without_retrying(servers):
    import asyncio

    async def slow(n, body):
        await asyncio.sleep(2.0)
        return _ok(n)

    app = _fake_app(slow)
    s = Suspect.load(_url(servers(app)), timeout=0.3, retries=3, backoff=0.01)
    t0 = time.monotonic()
    with pytest.raises(SuspectError, match=r"did not finish within the 0.3s deadline"):
        s.predict(torch.zeros(2, 2))
    assert time.monotonic() - t0 < 1.3
    assert len(app.state.calls) == 1 and s.queries == 2  # the inputs were sent: they count


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_errors_are_retried_then_succeed(status, servers, caplog):
    def flaky(n, body):
        if len(app.state.calls) <= 2:
            return JSONResponse({"error": "busy"}, status_code=status, headers={"Retry-After": "0"})
        return _ok(n)

    app = _fake_app(flaky)
    s = Suspect.load(_url(servers(app)), retries=3, backoff=0.01)
    with caplog.at_level(logging.INFO, logger="modelseal.suspect.remote"):
        out = s.predict(torch.zeros(5, 2))
    assert out.shape == (5, 3) and len(app.state.calls) == 3
    assert s.queries == 15 == sum(app.state.calls)  # every resend is charged
    assert f"HTTP {status} (busy); retrying" in caplog.text


def test_persistent_errors_give_up_after_bounded_retries(servers):
    app = _fake_app(lambda n, body: JSONResponse({"error": "model crashed"}, status_code=500))
    s = Suspect.load(_url(servers(app)), retries=2, backoff=0.01)
    with pytest.raises(SuspectError, match=r"failed after 3 attempts: HTTP 500 \(model crashed\)$"):
        s.predict(torch.zeros(2, 2))
    assert len(app.state.calls) == 3
    assert s.queries == 6


def test_client_errors_are_not_retried(servers):
    app = _fake_app(lambda n, body: JSONResponse({"error": "bad shape"}, status_code=400))
    s = Suspect.load(_url(servers(app)), retries=3, backoff=0.01)
    with pytest.raises(SuspectError, match="rejected the request .400: bad shape"):
        s.predict(torch.zeros(2, 2))
    assert len(app.state.calls) == 1


@pytest.mark.parametrize("body, message", [
    (Response("<html>oops</html>", media_type="text/html"), "non-JSON"),
    (JSONResponse({"result": [1, 2]}), "without an 'outputs' list"),
    (JSONResponse({"outputs": []}), "without an 'outputs' list"),
    ("wrong-batch", "answered 1 outputs for 2 inputs"),
    ("bytes", "datatype 'BYTES'"),
    ("short", "data has 5 values, but shape \\[2, 3\\] needs 6"),
    ("words", "FP32 data must be numbers"),
    ("bad-shape", "malformed output shape"),
    (Response('{"outputs": [{"name": "output", "datatype": "FP32", "shape": [2, 1], "data": [NaN, 1.0]}]}',
              media_type="application/json"), "NaN or infinite"),
    ("int-matrix", "must have shape \\[batch\\]"),
    ("fp64-overflow", "FP64 values beyond float32's range"),
    ("other-output", "without output 'output', which was asked for"),
])
def test_garbage_answers_end_in_clear_errors(body, message, servers):
    canned = {
        "wrong-batch": lambda n: _ok(n, shape=[1, 3]),
        "bytes": lambda n: _ok(n, dtype="BYTES"),
        "short": lambda n: _ok(n, data=[0.0] * 5),
        "words": lambda n: _ok(n, data=["a"] * (3 * n)),
        "bad-shape": lambda n: _ok(n, shape=[n, "3"], data=[0.0] * (3 * n)),
        "int-matrix": lambda n: _ok(n, dtype="INT64", shape=[n, 3], data=[1] * (3 * n)),
        "fp64-overflow": lambda n: _ok(n, dtype="FP64", data=[1e300] * (3 * n)),
        "other-output": lambda n: JSONResponse({"outputs": [{"name": "label", "datatype": "INT64", "shape": [n],
                                                             "data": [1] * n}]}),
    }
    app = _fake_app(lambda n, _: canned[body](n) if isinstance(body, str) else body)
    s = Suspect.load(_url(servers(app)), retries=3, backoff=0.01)
    with pytest.raises(SuspectError, match=message) as err:
        s.predict(torch.zeros(2, 2))
    assert "\n" not in str(err.value)
    assert len(app.state.calls) == 1  # a garbage answer is final, not retried
    assert s.queries == 2  # but the inputs were sent


def test_fp64_outputs_are_rounded_to_float32_and_the_output_is_requested_by_name(servers):
    app = _fake_app(lambda n, body: _ok(n, dtype="FP64", data=[0.1, 1e-3, 2.0] * n))
    s = Suspect.load(_url(servers(app)))
    out = s.predict(torch.zeros(2, 2))
    assert out.dtype == torch.float32 and out[0].tolist() == [np.float32(0.1), np.float32(1e-3), 2.0]
    assert s._backend.output_name == "output"
    assert app.state.bodies[0]["outputs"] == [{"name": "output"}]  # asked for by name, as JSON


def _dropping_app(drops: int):
    """An ASGI app that starts a response and then dies for the first `drops` infer calls."""
    inner = _fake_app(lambda n, body: _ok(n))
    state = {"drops": 0}

    async def app(scope, receive, send):
        if scope["type"] == "http" and scope["path"].endswith("/infer") and state["drops"] < drops:
            state["drops"] += 1
            await receive()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"1000")]})
            raise RuntimeError("connection dropped on purpose")
        await inner(scope, receive, send)

    return app, inner, state


def test_dropped_connection_is_retried(servers):
    app, inner, state = _dropping_app(drops=1)
    s = Suspect.load(_url(servers(app)), retries=2, backoff=0.01)
    assert s.predict(torch.zeros(3, 2)).shape == (3, 3)
    assert state["drops"] == 1 and len(inner.state.calls) == 1
    assert s.queries == 6  # sent twice: once into the dropped connection, once answered


@contextlib.contextmanager
def _slamming_server(metadata: bytes):
    """A raw TCP server: answers the metadata request, then closes every other connection at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)
    stop = threading.Event()
    seen = {"closed": 0}

    def loop():
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    head = conn.recv(65536)
                except OSError:
                    continue
                if head.startswith(b"GET "):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                 b"Content-Length: " + str(len(metadata)).encode() + b"\r\n\r\n" + metadata)
                else:
                    seen["closed"] += 1

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", seen
    finally:
        stop.set()
        t.join(timeout=5)
        sock.close()


def test_server_that_always_closes_the_connection():
    with _slamming_server(json.dumps(_META).encode()) as (base, seen):
        s = Suspect.load(_url(base), retries=2, backoff=0.01)
        with pytest.raises(SuspectError, match=r"failed after 3 attempts: connection dropped"):
            s.predict(torch.zeros(2, 2))
        assert seen["closed"] == 3
        assert s.queries == 6


def test_unreachable_server_and_bad_urls(servers):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SuspectError, match="is the server running"):
        Suspect.load(f"http://127.0.0.1:{port}/v2/models/m", retries=1, backoff=0.01)
    with pytest.raises(SuspectError, match="not a v2 model URL"):
        Suspect.load("http://127.0.0.1:1/predict")
    with pytest.raises(SuspectError, match="credentials inside the URL"):
        Suspect.load("http://user:pw@127.0.0.1:1/v2/models/m")
    with pytest.raises(SuspectError, match="timeout must be"):
        Suspect.load("http://127.0.0.1:1/v2/models/m", timeout=0)
    base = servers(serve.make_app(torch.nn.Linear(2, 3)))
    with pytest.raises(SuspectError, match="check the model name"):
        Suspect.load(_url(base, "nope"))
    s = Suspect.load(_url(base) + "/infer")  # a pasted infer URL works too
    assert s._backend.ready() and s.input_shape is None


def test_rate_limit_spaces_requests(servers):
    app = _fake_app(lambda n, body: _ok(n))
    s = Suspect.load(_url(servers(app)), rate_limit=20.0, batch_size=1)
    t0 = time.monotonic()
    s.predict(torch.zeros(5, 2))
    assert time.monotonic() - t0 >= 0.18  # 5 requests at 20/s: at least 4 gaps of 50 ms
    assert app.state.calls == [1, 1, 1, 1, 1]


def test_max_batch_splits_requests(servers):
    app = _fake_app(lambda n, body: _ok(n))
    s = Suspect.load(_url(servers(app)), max_batch=4)
    assert s.predict(torch.zeros(10, 2)).shape == (10, 3)
    assert app.state.calls == [4, 4, 2]


# ---------------------------------------------------------------------------- bearer token
def test_token_is_used_but_never_shown(owner_cnn, mnist, servers, monkeypatch, caplog, capsys, tmp_path):
    base = servers(serve.make_app(owner_cnn, token=TOKEN), log_level="debug")
    seen: list[str] = []
    with caplog.at_level(logging.DEBUG):
        monkeypatch.delenv("MODELSEAL_TOKEN", raising=False)
        with pytest.raises(SuspectError, match=r"401.*MODELSEAL_TOKEN") as e:
            Suspect.load(_url(base))
        seen.append(str(e.value))
        monkeypatch.setenv("MODELSEAL_TOKEN", TOKEN + "x")
        with pytest.raises(SuspectError, match="was refused") as e:
            Suspect.load(_url(base))
        seen += [str(e.value), repr(e.value)]
        monkeypatch.setenv("MY_TOKEN", TOKEN)
        s = Suspect.load(_url(base), token_env="MY_TOKEN")
        x = mnist.test.x[:8]
        assert torch.equal(s.predict(x), Suspect(owner_cnn).predict(x))
        seen += [repr(s), str(s), repr(s._backend), str(vars(s).get("name"))]
        with pytest.raises(TypeError):
            import pickle

            pickle.dumps(s._backend)
    assert "MY_TOKEN" in repr(s._backend)
    out = capsys.readouterr()
    for text in seen + [caplog.text, out.out, out.err]:
        assert TOKEN not in text


def test_token_never_reaches_verdicts_or_keys(keyed, servers, monkeypatch, tmp_path):
    name = next((n for n in BLACK_BOX if _method_available(n)), None)
    if name is None:
        pytest.skip("no black-box method implemented yet")
    owner, key = keyed(name)
    monkeypatch.setenv("MODELSEAL_TOKEN", TOKEN)
    s = Suspect.load(_url(servers(serve.make_app(owner, token=TOKEN))))
    v = ms.verify(s, key)
    assert v.owned
    assert TOKEN not in json.dumps(v.to_dict(), default=str) and TOKEN not in repr(v)
    key.save(tmp_path / "k.seal")
    assert TOKEN.encode() not in (tmp_path / "k.seal").read_bytes()


def test_token_echoed_by_a_server_is_masked(servers, monkeypatch):
    async def meta(request):
        return JSONResponse({"error": "bad " + request.headers.get("authorization", "")}, status_code=403)

    base = servers(Starlette(routes=[Route("/v2/models/model", meta)]))
    monkeypatch.setenv("MODELSEAL_TOKEN", TOKEN)
    with pytest.raises(SuspectError) as e:
        Suspect.load(_url(base))
    assert TOKEN not in str(e.value) and "403" in str(e.value)


# ---------------------------------------------------------------------------- the server itself
def _post(url: str, payload, headers: dict | None = None) -> tuple[int, dict]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_validates_requests(owner_cnn, servers):
    app = serve.make_app(owner_cnn, name="cnn", token=TOKEN)
    base = servers(app)
    url = f"{base}/v2/models/cnn/infer"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    good = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}]}
    status, body = _post(url, good, auth)
    assert status == 200 and body["outputs"][0]["shape"] == [1, 10]
    bad = [
        (b"not json", 400, "not JSON"),
        ({"inputs": []}, 400, "exactly one tensor"),
        ({"inputs": [{**good["inputs"][0], "datatype": "INT64", "data": [0.5] * 784}]}, 400, "must be integers"),
        ({"inputs": [{**good["inputs"][0], "datatype": "FP64", "data": [0.1] * 784}]}, 400, "exactly"),
        ({"inputs": [{**good["inputs"][0], "datatype": "BYTES"}]}, 400, "BYTES"),
        ({"inputs": [{**good["inputs"][0], "name": "x"}]}, 400, "unknown input 'x'"),
        ({**good, "outputs": [{"name": "probs"}]}, 400, "unknown output 'probs'"),
        ({**good, "outputs": [{"name": "output", "parameters": {"class_count": 3}}]}, 400, "class_count"),
        ({"inputs": [{**good["inputs"][0], "shape": [1, 3, 28, 28]}]}, 400, "takes inputs of shape"),
        ({"inputs": [{**good["inputs"][0], "data": [0.0] * 783}]}, 400, "783 values"),
        ({"inputs": [{**good["inputs"][0], "data": ["x"] * 784}]}, 400, "must be numbers"),
        ({"inputs": [{**good["inputs"][0], "datatype": "INT64", "data": [0] * 784}]}, 200, None),
        ({"inputs": [{**good["inputs"][0], "datatype": "FP64", "data": [0.25] * 784}]}, 200, None),
        ({"inputs": [{**good["inputs"][0], "shape": [0, 1, 28, 28]}]}, 400, "positive integers"),
    ]
    for payload, code, msg in bad:
        status, body = _post(url, payload, auth)
        assert status == code and (msg is None or msg in body["error"]), (msg, body)
    assert _post(url, good)[0] == 401
    assert _post(url, good, {"Authorization": "Bearer wrong"})[0] == 401
    assert _post(f"{base}/v2/models/other/infer", good, auth)[0] == 404
    with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=10) as r:
        assert json.loads(r.read())["ready"] is True
    assert app.state.stats == {"requests": 3, "inputs": 3}


def test_server_serves_model_and_onnx_files(owner_cnn, mnist, servers, tmp_path):
    ms.models.save_model(owner_cnn, tmp_path / "m.safetensors")
    ms.models.export_onnx(owner_cnn, tmp_path / "m.onnx")
    x = mnist.test.x[:16]
    want = Suspect(owner_cnn).predict(x)
    for path in ("m.safetensors", "m.onnx"):
        s = Suspect.load(_url(servers(serve.make_app(tmp_path / path))))
        assert s.input_shape == (1, 28, 28) and s._backend.output_size == 10
        torch.testing.assert_close(s.predict(x), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ModelSealError, match="does not exist"):
        serve.make_app(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelSealError, match="cannot serve"):
        serve.make_app(tmp_path / "junk.onnx")
    with pytest.raises(ModelSealError, match="model name"):
        serve.make_app(owner_cnn, name="a/b")


def test_remote_backend_options_are_known():
    assert {"token_env", "timeout", "retries", "backoff", "rate_limit", "label_only",
            "max_batch"} <= RemoteBackend.OPTIONS
    with pytest.raises(SuspectError, match="rate_limit"):
        RemoteBackend("http://127.0.0.1:1/v2/models/m", rate_limit=0)
