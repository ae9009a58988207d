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

    from .._version import __version__

    if not isinstance(name, str) or not name or "/" in name:
        raise ModelSealError(f"model name must be a non-empty string without '/', got {name!r}")
    if token is not None and not token.strip():
        raise ModelSealError("the bearer token is empty; set a non-empty token or none")
    max_batch = count("max_batch", max_batch, 1, MAX_BATCH)
    suspect = _as_suspect(model)
    suspect.max_queries = None
    input_shape = tuple(suspect.input_shape) if suspect.input_shape is not None else None
    lock = threading.Lock()
    stats = {"requests": 0, "inputs": 0}

    output_size: int | None = suspect.output_size()
    if output_size is None and input_shape is not None:
        with lock:
            output_size = int(suspect.predict(torch.zeros(1, *input_shape)).reshape(1, -1).shape[1])
        suspect.queries = 0
    input_name = "input"
    out_meta = ({"name": "label", "datatype": "INT64", "shape": [-1]} if label_only else
                {"name": "output", "datatype": "FP32", "shape": [-1, output_size if output_size else -1]})
    output_name = out_meta["name"]
    metadata = {"name": name, "versions": [VERSION], "platform": "modelseal",
                "inputs": [{"name": input_name, "datatype": "FP32",
                            "shape": [-1, *(input_shape if input_shape is not None else [-1])]}],
                "outputs": [out_meta], "parameters": {"label_only": bool(label_only)}}
    server_meta = {"name": "modelseal", "version": __version__, "extensions": [oip.BINARY_EXTENSION]}

    def error(status: int, msg: str, **headers: str) -> JSONResponse:
        return JSONResponse({"error": msg}, status_code=status, headers=headers or None)

    def check(request: Request) -> JSONResponse | None:
        if request.path_params["name"] != name:
            return error(404, f"unknown model '{request.path_params['name']}'; this server serves '{name}'")
        version = request.path_params.get("version")
        if version is not None and version != VERSION:
            return error(404, f"unknown version '{version}' of model '{name}'; this server serves version "
                              f"'{VERSION}'")
        if token is not None:
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                return error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
        return None

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(server_meta)

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def model_meta(request: Request) -> Response:
        return check(request) or JSONResponse(metadata)

    async def model_ready(request: Request) -> Response:
        return check(request) or JSONResponse({"name": name, "ready": True})

    def parse(body: bytes, header_length: str | None) -> tuple[np.ndarray, dict] | JSONResponse:
        try:
            req, tail = oip.split_body(body, header_length)
        except oip.TensorError as e:
            return error(400, f"request {e}; send {{\"inputs\": [{{name, shape, datatype, data}}]}}")
        inputs = req.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            return error(400, f"request needs an 'inputs' list with exactly one tensor ('{input_name}')")
        inp = inputs[0]
        if inp.get("name") != input_name:
            return error(400, f"unknown input {inp.get('name')!r}; model '{name}' takes one input "
                              f"'{input_name}'")
        shape = inp.get("shape")
        if (not isinstance(shape, list) or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            return error(400, f"input shape must be a list of positive integers, got {shape!r}")
        if input_shape is not None and tuple(shape[1:]) != input_shape:
            dims = ", ".join(map(str, input_shape))
            return error(400, f"model '{name}' takes inputs of shape [batch, {dims}], got {shape}")
        if shape[0] > max_batch:
            return error(400, f"batch of {shape[0]} inputs is larger than this server's limit of {max_batch}")
        try:
            (binary,) = oip.binary_slices(inputs, tail)
            dt, arr = oip.read_tensor(inp, binary, allow_zero=False)
            x = oip.to_float32(arr, dt, what="input")
        except oip.TensorError as e:
            return error(400, f"input '{input_name}': {e}")
        if not np.isfinite(x).all():
            return error(400, "input data contains NaN or infinite values")
        outs = req.get("outputs")
        params = given if isinstance(given := req.get("parameters"), dict) else {}
        default_binary = params.get("binary_data_output") is True
        if outs is None or outs == []:
            want = {output_name: default_binary}
        else:
            if not isinstance(outs, list) or not all(isinstance(o, dict) for o in outs):
                return error(400, "'outputs' must be a list of {name, parameters}")
            want = {}
            for o in outs:
                if o.get("name") != output_name:
                    return error(400, f"unknown output {o.get('name')!r}; model '{name}' has one output "
                                      f"'{output_name}'")
                op = o.get("parameters") if isinstance(o.get("parameters"), dict) else {}
                if op.get("class_count"):
                    return error(400, "the classification extension (class_count) is not supported; ask "
                                      f"for the raw output '{output_name}'")
                b = op.get("binary_data")
                want[output_name] = default_binary if b is None else b is True
        rid = req.get("id")
        return x, {"id": rid if isinstance(rid, str) else None, "binary": want[output_name]}

    def answer(x: np.ndarray, bearer: str | None = None) -> np.ndarray:
        with lock:
            out = suspect.predict(torch.from_numpy(x)).numpy()
            return out if answer_hook is None else answer_hook(x, out, bearer)

    def bearer_of(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        return auth[7:] if auth[:7].lower() == "bearer " and auth[7:] else None

    async def read_body(request: Request) -> bytes | JSONResponse:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            return error(413, f"request body is larger than {MAX_BODY // 2**20} MiB; send smaller batches")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                return error(413, f"request body is larger than {MAX_BODY // 2**20} MiB; send smaller batches")
            chunks.append(chunk)
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "deflate"):
            inflate = zlib.decompressobj(31 if encoding == "gzip" else 15)
            try:
                body = inflate.decompress(body, MAX_BODY + 1)
            except zlib.error:
                return error(400, f"request body is not valid {encoding} data")
            if len(body) > MAX_BODY or inflate.unconsumed_tail:
                return error(413, f"request body inflates past {MAX_BODY // 2**20} MiB; send smaller batches")
        elif encoding != "identity":
            return error(415, f"Content-Encoding {encoding!r} is not supported; send identity, gzip or deflate")
        return body

    async def infer(request: Request) -> Response:
        denied = check(request)
        if denied is not None:
            return denied
        body = await read_body(request)
        if isinstance(body, JSONResponse):
            return body
        parsed = parse(body, request.headers.get(oip.HEADER_LENGTH))
        if isinstance(parsed, JSONResponse):
            return parsed
        x, opts = parsed
        try:
            out = await run_in_threadpool(answer, x, bearer_of(request))
        except ModelSealError as e:
            return error(400, first_line(e, limit=10_000))
        except Exception as e:  # the model itself failed; say so without leaking a traceback
            return error(500, f"model failed on a batch of shape {list(x.shape)}: {type(e).__name__}")
        stats["requests"] += 1
        stats["inputs"] += len(x)
        if label_only:
            values = (out.reshape(len(out), -1).argmax(1) if out.ndim > 1 else out).astype(np.int64)
            dt = "INT64"
        else:
            values, dt = out.astype(np.float32, copy=False), "FP32"
        output: dict[str, Any] = {"name": output_name, "datatype": dt, "shape": list(values.shape)}
        resp: dict[str, Any] = {"model_name": name, "model_version": VERSION, "outputs": [output]}
        if opts["id"] is not None:
            resp["id"] = opts["id"]
        if not opts["binary"]:
            output["data"] = oip.to_json_data(values, dt)
            return JSONResponse(resp)
        raw = oip.to_binary(values, dt)
        output["parameters"] = {"binary_data_size": len(raw)}
        head = json.dumps(resp, separators=(",", ":")).encode()
        return Response(head + raw, media_type="application/octet-stream",
                        headers={oip.HEADER_LENGTH: str(len(head))})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        detail = {404: f"no such endpoint {request.url.path}; this server serves /v2 and /v2/models/{name}",
                  405: f"{request.method} is not allowed on {request.url.path}"}.get(status, str(
                      getattr(exc, "detail", "") or "error"))
        return error(status, detail, **dict(getattr(exc, "headers", None) or {}))

    async def server_error(request: Request, exc: Exception) -> Response:
        return error(500, f"internal server error ({type(exc).__name__})")

    routes = [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
    ]
    for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [Route(base, model_meta, methods=["GET"]),
                   Route(base + "/ready", model_ready, methods=["GET"]),
                   Route(base + "/infer", infer, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.stats = stats
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
