"""Serve a model over the Open Inference Protocol (KServe v2 / Triton HTTP/REST).

`make_app(model)` builds a small Starlette app; `run(model, port=...)` serves it with uvicorn on
127.0.0.1 unless told otherwise; `background(app)` runs one in a thread (tests, demos, benchmarks).
Endpoints (`{v}` = optional `/versions/1`): `GET /v2` (server metadata), `GET /v2/health/live`,
`GET /v2/health/ready`, `GET /v2/models/{name}{v}` (model metadata), `GET /v2/models/{name}{v}/ready`,
`POST /v2/models/{name}{v}/infer`. Every error, unrouted paths and wrong methods included, is a JSON
`{"error": "..."}` body, as standard clients (tritonclient, KServe) expect.

Requests may carry tensors as JSON or with the binary tensor data extension (`Inference-Header-Content-Length`,
`parameters.binary_data_size`; the default of tritonclient); gzip/deflate request bodies are accepted.
Outputs are returned as binary when the request asks (`parameters.binary_data_output`, or an output's
`parameters.binary_data`), else as JSON. See `modelseal.suspect.oip` for datatypes and conversions.

Where modelseal deviates from a full v2 server, and why:
- One model, one version ("1"), one input (`input`, FP32 [batch, *input_shape]), one output (`output`,
  FP32 [batch, output_size]; label-only mode serves `label`, INT64 [batch], and says
  `parameters.label_only = true` in the metadata): that is what modelseal's models and suspects need. No
  model repository, no gRPC, no shared memory, no classification extension (`class_count` is refused).
- Inputs of any numeric datatype (FP16/FP32/FP64/BF16/INT*/UINT*/BOOL) are accepted when every value
  converts to float32 exactly, and refused otherwise; the input name and requested output names are
  checked against the metadata.
- A bearer token, when set, guards the model endpoints (401 otherwise); server metadata and health
  endpoints stay open so that orchestrators can probe them. The token is compared in constant time and
  never logged.
- Requests are validated before the model runs (name, datatype, shape against the model's input shape,
  data length, finite values, batch size, body size) and refused with 400/413 and a JSON error.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelSealError, SuspectError, first_line
from ..validate import MAX_BATCH, count
from . import Suspect, oip

DEFAULT_HOST = "127.0.0.1"
MAX_BODY = 64 * 1024 * 1024
VERSION = "1"


def _need_stack() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ModelSealError("serving needs starlette and uvicorn; pip install starlette uvicorn") from None


def _as_suspect(model: nn.Module | Suspect | str | os.PathLike) -> Suspect:
    if isinstance(model, Suspect):
        return model
    if isinstance(model, nn.Module):
        return Suspect(model)
    from ..safeio import usable_path

    path = usable_path(model, what="model file")
    if not path.is_file():
        raise ModelSealError(f"model file {path} does not exist; give a modelseal .safetensors model or an "
                             ".onnx file")
    try:
        return Suspect.load(path)
    except SuspectError as e:
        raise ModelSealError(f"cannot serve {path}: {e}") from None


def model_url(host: str, port: int, name: str = "model") -> str:
    """The URL a client passes to `Suspect.load` for a model served by `run`/`background`."""
    h = f"[{host}]" if ":" in host else host
    return f"http://{h}:{port}/v2/models/{name}"


class _Refusal(Exception):
    """A request refused before (or instead of) an answer: its HTTP status, message and headers."""

    def __init__(self, status: int, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class _Endpoint:
    """One served model: the Open Inference Protocol's checks, parsing, answer and encoding as named steps
    (`make_app` routes requests to them). Every step raises `_Refusal` for what it refuses."""

    def __init__(self, suspect: Suspect, name: str, label_only: bool, token: str | None, max_batch: int,
                 answer_hook: Callable[[np.ndarray, np.ndarray, str | None], np.ndarray] | None) -> None:
        from .._version import __version__

        self.suspect, self.name, self.label_only, self.token = suspect, name, label_only, token
        self.max_batch, self.answer_hook = max_batch, answer_hook
        self.lock = threading.Lock()
        self.stats = {"requests": 0, "inputs": 0}
        self.input_shape = tuple(suspect.input_shape) if suspect.input_shape is not None else None
        output_size: int | None = suspect.output_size()
        if output_size is None and self.input_shape is not None:
            with self.lock:
                output_size = int(suspect.predict(torch.zeros(1, *self.input_shape)).reshape(1, -1).shape[1])
            suspect.queries = 0
        self.input_name = "input"
        out_meta = ({"name": "label", "datatype": "INT64", "shape": [-1]} if label_only else
                    {"name": "output", "datatype": "FP32", "shape": [-1, output_size if output_size else -1]})
        self.output_name = out_meta["name"]
        self.metadata = {"name": name, "versions": [VERSION], "platform": "modelseal",
                         "inputs": [{"name": self.input_name, "datatype": "FP32",
                                     "shape": [-1, *(self.input_shape if self.input_shape is not None else [-1])]}],
                         "outputs": [out_meta], "parameters": {"label_only": bool(label_only)}}
        self.server_meta = {"name": "modelseal", "version": __version__, "extensions": [oip.BINARY_EXTENSION]}

    # ---------------------------------------------------------------- checks
    def check(self, model: str, version: str | None, authorization: str) -> None:
        """The model and version asked for are this one's, and the bearer token (when one is set) matches."""
        if model != self.name:
            raise _Refusal(404, f"unknown model '{model}'; this server serves '{self.name}'")
        if version is not None and version != VERSION:
            raise _Refusal(404, f"unknown version '{version}' of model '{self.name}'; this server serves version "
                                f"'{VERSION}'")
        if self.token is not None:
            given = authorization[7:] if authorization[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                raise _Refusal(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})

    # ---------------------------------------------------------------- request -> inputs
    def parse(self, body: bytes, header_length: str | None) -> tuple[np.ndarray, dict[str, Any]]:
        """The request's input tensor (validated: name, shape, batch, datatype, finite) and how to answer."""
        try:
            req, tail = oip.split_body(body, header_length)
        except oip.TensorError as e:
            raise _Refusal(400, f"request {e}; send {{\"inputs\": [{{name, shape, datatype, data}}]}}") from None
        inputs = req.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise _Refusal(400, f"request needs an 'inputs' list with exactly one tensor ('{self.input_name}')")
        x = self._input(inputs, tail)
        rid = req.get("id")
        return x, {"id": rid if isinstance(rid, str) else None, "binary": self._binary_output(req)}

    def _input(self, inputs: list[dict[str, Any]], tail: memoryview) -> np.ndarray:
        inp = inputs[0]
        if inp.get("name") != self.input_name:
            raise _Refusal(400, f"unknown input {inp.get('name')!r}; model '{self.name}' takes one input "
                                f"'{self.input_name}'")
        shape = inp.get("shape")
        if (not isinstance(shape, list) or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            raise _Refusal(400, f"input shape must be a list of positive integers, got {shape!r}")
        if self.input_shape is not None and tuple(shape[1:]) != self.input_shape:
            dims = ", ".join(map(str, self.input_shape))
            raise _Refusal(400, f"model '{self.name}' takes inputs of shape [batch, {dims}], got {shape}")
        if shape[0] > self.max_batch:
            raise _Refusal(400, f"batch of {shape[0]} inputs is larger than this server's limit of "
                                f"{self.max_batch}")
        try:
            (binary,) = oip.binary_slices(inputs, tail)
            dt, arr = oip.read_tensor(inp, binary, allow_zero=False)
            x = oip.to_float32(arr, dt, what="input")
        except oip.TensorError as e:
            raise _Refusal(400, f"input '{self.input_name}': {e}") from None
        if not np.isfinite(x).all():
            raise _Refusal(400, "input data contains NaN or infinite values")
        return x

    def _binary_output(self, req: dict[str, Any]) -> bool:
        """Whether the output goes back as binary data: the request's default, else the output's own choice."""
        params = given if isinstance(given := req.get("parameters"), dict) else {}
        default_binary = params.get("binary_data_output") is True
        outs = req.get("outputs")
        if outs is None or outs == []:
            return default_binary
        if not isinstance(outs, list) or not all(isinstance(o, dict) for o in outs):
            raise _Refusal(400, "'outputs' must be a list of {name, parameters}")
        binary = default_binary
        for o in outs:
            if o.get("name") != self.output_name:
                raise _Refusal(400, f"unknown output {o.get('name')!r}; model '{self.name}' has one output "
                                    f"'{self.output_name}'")
            op = o.get("parameters") if isinstance(o.get("parameters"), dict) else {}
            if op.get("class_count"):
                raise _Refusal(400, "the classification extension (class_count) is not supported; ask for the "
                                    f"raw output '{self.output_name}'")
            b = op.get("binary_data")
            binary = default_binary if b is None else b is True
        return binary

    # ---------------------------------------------------------------- inputs -> answer -> response
    def answer(self, x: np.ndarray, bearer: str | None = None) -> np.ndarray:
        """The model's outputs for `x` (one batch at a time), as the answer hook serves them."""
        with self.lock:
            out = self.suspect.predict(torch.from_numpy(x)).numpy()
            return out if self.answer_hook is None else self.answer_hook(x, out, bearer)

    def encode(self, out: np.ndarray, opts: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
        """The response header and, for a binary answer, the raw tensor bytes that follow it."""
        if self.label_only:
            values = (out.reshape(len(out), -1).argmax(1) if out.ndim > 1 else out).astype(np.int64)
            dt = "INT64"
        else:
            values, dt = out.astype(np.float32, copy=False), "FP32"
        output: dict[str, Any] = {"name": self.output_name, "datatype": dt, "shape": list(values.shape)}
        resp: dict[str, Any] = {"model_name": self.name, "model_version": VERSION, "outputs": [output]}
        if opts["id"] is not None:
            resp["id"] = opts["id"]
        if not opts["binary"]:
            output["data"] = oip.to_json_data(values, dt)
            return resp, None
        raw = oip.to_binary(values, dt)
        output["parameters"] = {"binary_data_size": len(raw)}
        return resp, raw


async def _read_body(request: Any) -> bytes:
    """The request body, bounded by MAX_BODY before and after inflating gzip/deflate."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise _Refusal(413, f"request body is larger than {MAX_BODY // 2**20} MiB; send smaller batches")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _Refusal(413, f"request body is larger than {MAX_BODY // 2**20} MiB; send smaller batches")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("gzip", "deflate"):
        inflate = zlib.decompressobj(31 if encoding == "gzip" else 15)
        try:
            body = inflate.decompress(body, MAX_BODY + 1)
        except zlib.error:
            raise _Refusal(400, f"request body is not valid {encoding} data") from None
        if len(body) > MAX_BODY or inflate.unconsumed_tail:
            raise _Refusal(413, f"request body inflates past {MAX_BODY // 2**20} MiB; send smaller batches")
    elif encoding != "identity":
        raise _Refusal(415, f"Content-Encoding {encoding!r} is not supported; send identity, gzip or deflate")
    return body


def _bearer(authorization: str) -> str | None:
    return authorization[7:] if authorization[:7].lower() == "bearer " and authorization[7:] else None


def make_app(model: nn.Module | Suspect | str | os.PathLike, name: str = "model", *, label_only: bool = False,
             token: str | None = None, max_batch: int = 4096,
             answer_hook: Callable[[np.ndarray, np.ndarray, str | None], np.ndarray] | None = None):
    """A Starlette app serving `model` (module, Suspect, modelseal model file or ONNX file) as `name`.

    `answer_hook(inputs, outputs, bearer_token)`, when given, returns the outputs actually served (an API
    watermark: `modelseal.guard.Guard.serve_hook`); it sees the raw outputs before label-only conversion.
    `app.state.stats` counts requests and inputs answered (`{"requests": n, "inputs": m}`).
    """
    _need_stack()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    if not isinstance(name, str) or not name or "/" in name:
        raise ModelSealError(f"model name must be a non-empty string without '/', got {name!r}")
    if token is not None and not token.strip():
        raise ModelSealError("the bearer token is empty; set a non-empty token or none")
    suspect = _as_suspect(model)
    suspect.max_queries = None
    ep = _Endpoint(suspect, name, label_only, token, count("max_batch", max_batch, 1, MAX_BATCH), answer_hook)

    def error(status: int, msg: str, **headers: str) -> JSONResponse:
        return JSONResponse({"error": msg}, status_code=status, headers=headers or None)

    def checked(request: Request) -> None:
        ep.check(request.path_params["name"], request.path_params.get("version"),
                 request.headers.get("authorization", ""))

    async def infer(request: Request) -> Response:
        try:
            checked(request)
            x, opts = ep.parse(await _read_body(request), request.headers.get(oip.HEADER_LENGTH))
        except _Refusal as r:
            return error(r.status, r.message, **r.headers)
        try:
            out = await run_in_threadpool(ep.answer, x, _bearer(request.headers.get("authorization", "")))
        except ModelSealError as e:
            return error(400, first_line(e, limit=10_000))
        except Exception as e:  # the model itself failed; say so without leaking a traceback
            return error(500, f"model failed on a batch of shape {list(x.shape)}: {type(e).__name__}")
        ep.stats["requests"] += 1
        ep.stats["inputs"] += len(x)
        resp, raw = ep.encode(out, opts)
        if raw is None:
            return JSONResponse(resp)
        head = json.dumps(resp, separators=(",", ":")).encode()
        return Response(head + raw, media_type="application/octet-stream",
                        headers={oip.HEADER_LENGTH: str(len(head))})

    def model_route(body: Callable[[], dict[str, Any]]) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            try:
                checked(request)
            except _Refusal as r:
                return error(r.status, r.message, **r.headers)
            return JSONResponse(body())
        return handler

    def fixed(body: dict[str, Any]) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            return JSONResponse(body)
        return handler

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = {404: f"no such endpoint {request.url.path}; this server serves /v2 and /v2/models/{name}",
                  405: f"{request.method} is not allowed on {request.url.path}"}.get(status, str(
                      getattr(exc, "detail", "") or "error"))
        return error(status, detail, **dict(getattr(exc, "headers", None) or {}))

    async def server_error(request: Request, exc: Exception) -> Response:
        return error(500, f"internal server error ({type(exc).__name__})")

    routes = [Route("/v2", fixed(ep.server_meta), methods=["GET"]),
              Route("/v2/health/live", fixed({"live": True}), methods=["GET"]),
              Route("/v2/health/ready", fixed({"ready": True}), methods=["GET"])]
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [Route(base, model_route(lambda: ep.metadata), methods=["GET"]),
                   Route(base + "/ready", model_route(lambda: {"name": name, "ready": True}), methods=["GET"]),
                   Route(base + "/infer", infer, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.stats = ep.stats
    app.state.model_name = name
    return app


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (not yet listening); a port in use or a host that cannot be bound ends
    in one ModelSealError, before anything is announced."""
    port = count("port", port, 0, 65535)
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        raise ModelSealError(f"cannot serve on {host}: {e.strerror or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        sock.close()
        why = getattr(e, "strerror", None) or first_line(e)
        hint = "; choose another --port or stop what listens there" if getattr(e, "errno", None) == 98 else ""
        raise ModelSealError(f"cannot serve on {host}:{port}: {why}{hint}") from None
    return sock


def run(model: nn.Module | Suspect | str | os.PathLike, *, host: str = DEFAULT_HOST, port: int = 8000,
        name: str = "model", label_only: bool = False, token: str | None = None, max_batch: int = 4096,
        answer_hook: Callable[[np.ndarray, np.ndarray, str | None], np.ndarray] | None = None,
        log_level: str = "warning", on_ready: Any = None) -> None:
    """Serve `model` with uvicorn until Ctrl-C or SIGTERM, which stop it cleanly (`run` returns).

    The model is loaded and the address bound first, so that a bad model file, a port in use or a host
    that cannot be bound ends in one ModelSealError; `on_ready(url)` is called once the server listens
    (the URL is `model_url(host, port, name)`, with the bound port when `port` is 0), so a caller announces
    "serving" only when it is true."""
    _need_stack()
    import signal

    import uvicorn

    app = make_app(model, name, label_only=label_only, token=token, max_batch=max_batch, answer_hook=answer_hook)
    sock = _bind(host, port)
    url = model_url(host, sock.getsockname()[1], name)

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit and on_ready is not None:
                on_ready(url)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # Stop on SIGINT/SIGTERM like uvicorn, but do not re-raise the signal after the shutdown (uvicorn
            # does): a server stopped as documented has succeeded, and the caller's handlers stay untouched.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            sigs = [getattr(signal, n) for n in ("SIGINT", "SIGTERM") if hasattr(signal, n)]
            old = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
            try:
                yield
            finally:
                for sig, handler in old.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(app, host=host, port=sock.getsockname()[1], log_level=log_level,
                            timeout_graceful_shutdown=2)
    try:
        Server(config).run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def background(app: Any, host: str = DEFAULT_HOST, port: int = 0, *, log_level: str = "warning",
               startup_timeout: float = 20.0) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a daemon thread; yields `http://host:port` and stops it on exit."""
    _need_stack()
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, host=host, port=bound, log_level=log_level, lifespan="off",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name=f"modelseal-serve-{bound}")
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ModelSealError(f"server on {host}:{bound} did not start within {startup_timeout:g}s")
            time.sleep(0.02)
        h = f"[{host}]" if ":" in host else host
        yield f"http://{h}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
