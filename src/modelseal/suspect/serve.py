"""Serve a model over the Open Inference Protocol (KServe v2 / Triton HTTP/REST, JSON tensors).

`make_app(model)` builds a small Starlette app; `run(model, port=...)` serves it with uvicorn on
127.0.0.1 unless told otherwise; `background(app)` runs one in a thread (tests, demos, benchmarks).
Endpoints: `GET /v2/health/live`, `GET /v2/health/ready`, `GET /v2/models/{name}` (metadata),
`GET /v2/models/{name}/ready`, `POST /v2/models/{name}/infer`.

Where modelseal deviates from a full v2 server, and why:
- One model, one FP32 input, one output (`output`, FP32 [batch, output_size]; label-only mode sends
  `label`, INT64 [batch], and says `parameters.label_only = true` in the metadata): that is what
  modelseal's models and suspects need. No binary-data extension, no versions, no model repository.
- A bearer token, when set, guards the model endpoints (401 otherwise); health endpoints stay open so
  that orchestrators can probe them. The token is compared in constant time and never logged.
- Requests are validated before the model runs (datatype, shape against the model's input shape, data
  length, finite values, batch size) and refused with 400 and a JSON `{"error": ...}` body.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelSealError, SuspectError
from . import Suspect

DEFAULT_HOST = "127.0.0.1"
MAX_BODY = 64 * 1024 * 1024


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
    path = Path(model)
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
             token: str | None = None, max_batch: int = 4096):
    """A Starlette app serving `model` (module, Suspect, modelseal model file or ONNX file) as `name`.

    `app.state.stats` counts requests and inputs answered (`{"requests": n, "inputs": m}`).
    """
    _need_stack()
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    if not isinstance(name, str) or not name or "/" in name:
        raise ModelSealError(f"model name must be a non-empty string without '/', got {name!r}")
    if token is not None and not token.strip():
        raise ModelSealError("the bearer token is empty; set a non-empty token or none")
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
    metadata = {"name": name, "versions": ["1"], "platform": "modelseal",
                "inputs": [{"name": input_name, "datatype": "FP32",
                            "shape": [-1, *(input_shape if input_shape is not None else [-1])]}],
                "outputs": [out_meta], "parameters": {"label_only": bool(label_only)}}

    def error(status: int, msg: str, **headers: str) -> JSONResponse:
        return JSONResponse({"error": msg}, status_code=status, headers=headers or None)

    def check(request: Request) -> JSONResponse | None:
        if request.path_params["name"] != name:
            return error(404, f"unknown model '{request.path_params['name']}'; this server serves '{name}'")
        if token is not None:
            auth = request.headers.get("authorization", "")
            given = auth[7:] if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                return error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
        return None

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": True})

    async def model_meta(request: Request) -> Response:
        return check(request) or JSONResponse(metadata)

    async def model_ready(request: Request) -> Response:
        return check(request) or JSONResponse({"name": name, "ready": True})

    def parse(body: bytes) -> tuple[np.ndarray, str | None] | JSONResponse:
        try:
            req = json.loads(body)
        except ValueError:
            return error(400, "request body is not JSON; send {\"inputs\": [{name, shape, datatype, data}]}")
        inputs = req.get("inputs") if isinstance(req, dict) else None
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            return error(400, "request needs an 'inputs' list with exactly one tensor")
        inp = inputs[0]
        if str(inp.get("datatype", "")).upper() != "FP32":
            return error(400, f"input datatype must be FP32, got {inp.get('datatype')!r}")
        shape = inp.get("shape")
        if (not isinstance(shape, list) or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
            return error(400, f"input shape must be a list of positive integers, got {shape!r}")
        if input_shape is not None and tuple(shape[1:]) != input_shape:
            dims = ", ".join(map(str, input_shape))
            return error(400, f"model '{name}' takes inputs of shape [batch, {dims}], got {shape}")
        if shape[0] > max_batch:
            return error(400, f"batch of {shape[0]} inputs is larger than this server's limit of {max_batch}")
        data = inp.get("data")
        if not isinstance(data, list):
            return error(400, "input needs a 'data' list (row-major values)")
        try:
            arr = np.asarray(data, dtype=np.float32).reshape(-1)
        except (ValueError, TypeError):
            return error(400, "input data must be numbers")
        if arr.size != math.prod(shape):
            return error(400, f"input data has {arr.size} values, but shape {shape} needs {math.prod(shape)}")
        if not np.isfinite(arr).all():
            return error(400, "input data contains NaN or infinite values")
        rid = req.get("id")
        return arr.reshape(shape), (rid if isinstance(rid, str) else None)

    def answer(x: np.ndarray) -> np.ndarray:
        with lock:
            return suspect.predict(torch.from_numpy(x)).numpy()

    async def infer(request: Request) -> Response:
        denied = check(request)
        if denied is not None:
            return denied
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            return error(413, f"request body is larger than {MAX_BODY // 2**20} MiB; send smaller batches")
        body = await request.body()
        if len(body) > MAX_BODY:
            return error(413, f"request body is larger than {MAX_BODY // 2**20} MiB; send smaller batches")
        parsed = parse(body)
        if isinstance(parsed, JSONResponse):
            return parsed
        x, rid = parsed
        try:
            out = await run_in_threadpool(answer, x)
        except ModelSealError as e:
            return error(400, str(e).splitlines()[0])
        except Exception as e:  # the model itself failed; say so without leaking a traceback
            return error(500, f"model failed on a batch of shape {list(x.shape)}: {type(e).__name__}")
        stats["requests"] += 1
        stats["inputs"] += len(x)
        if label_only:
            labels = out.reshape(len(out), -1).argmax(1) if out.ndim > 1 else out.astype(np.int64)
            output = {"name": "label", "datatype": "INT64", "shape": [len(x)], "data": labels.tolist()}
        else:
            out = out.astype(np.float32, copy=False)
            output = {"name": "output", "datatype": "FP32", "shape": list(out.shape),
                      "data": out.reshape(-1).tolist()}
        resp: dict[str, Any] = {"model_name": name, "outputs": [output]}
        if rid is not None:
            resp["id"] = rid
        return JSONResponse(resp)

    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2/models/{name}", model_meta, methods=["GET"]),
        Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.stats = stats
    app.state.model_name = name
    return app


def run(model: nn.Module | Suspect | str | os.PathLike, *, host: str = DEFAULT_HOST, port: int = 8000,
        name: str = "model", label_only: bool = False, token: str | None = None,
        log_level: str = "warning") -> None:
    """Serve `model` with uvicorn until interrupted; the URL is `model_url(host, port, name)`."""
    import uvicorn

    app = make_app(model, name, label_only=label_only, token=token)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


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
