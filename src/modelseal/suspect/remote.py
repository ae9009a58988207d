"""Remote suspects over the Open Inference Protocol (KServe v2 / Triton HTTP/REST).

`Suspect.load("http://host:port/v2/models/NAME[/versions/V]")` builds a `RemoteBackend`. It reads the
server metadata (`GET /v2`: does the server speak the binary tensor data extension?) and the model
metadata (`GET {url}`: input name, datatype and shape; outputs), then sends every batch as one
`POST {url}/infer` with one input tensor, asking for one output by name.

- **Output**: the one named by `output_name`, else the first floating-point output the metadata declares
  (raw scores, e.g. MLServer's `predict_proba`), else its first output. It is always requested by name,
  so a server's default output (often labels) never silently replaces it. Integer outputs are labels: the
  endpoint is then label-only and methods that need raw outputs refuse it.
- **Tensors**: binary (Triton's extension) when the server metadata lists `binary_tensor_data` or
  `binary=True`, else JSON; both are exact. Inputs go in the datatype the model declares when every value
  converts exactly, and are refused otherwise; see `modelseal.suspect.oip`.
- **Deadline**: `timeout` bounds a whole call (connecting, sending, a trickling answer, every retry and
  every wait), enforced by socket timeouts and a watchdog that closes the socket at the deadline.
- **Retries**: on 429, 500, 502, 503, 504 and dropped connections, at most `retries` times, after
  `Retry-After` when the server sends one (seconds or an HTTP date) else after exponential backoff; a wait
  that would pass the deadline is not started. When a call fails, the message keeps the first meaningful
  error (an HTTP status with its text) and adds the last one if it differs.
- **Counting**: every input is charged (through the `Suspect`'s budget) right before it is sent, retries
  included, so `Suspect.queries` is never less than what the server saw and never more than the budget;
  a retry that the budget cannot pay for raises `BudgetExceeded` instead of being sent.
- **Token**: read from an environment variable named by the user (default `MODELSEAL_TOKEN`), never
  taken as an argument, so it cannot end up in shell history, keys, reports or reprs. Every message is
  masked before it is cut to length, and any run of 4 or more characters that starts the token is masked
  too (a server may echo a truncated header). Credentials inside the URL are refused.

Where modelseal deviates from a full v2 client, and why: one input tensor and one output per request
(what verdicts need); no gRPC, no shared memory, no HTTP proxy (the connection goes straight to the host
in the URL); BYTES tensors are refused (no modelseal model takes text).
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import json
import logging
import math
import os
import re
import select
import socket
import ssl
import threading
import time
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np
import torch

from ..errors import SuspectError
from ..validate import MAX_BATCH, count, number
from . import oip

log = logging.getLogger(__name__)

_RETRY_STATUS = {429, 500, 502, 503, 504}
_MAX_BODY = 256 * 1024 * 1024
_MAX_TIMEOUT = 24 * 3600.0


class RemoteBackend:
    """A black-box suspect behind an Open Inference Protocol endpoint; callable on a batch of inputs."""

    OPTIONS = frozenset({"token_env", "timeout", "retries", "backoff", "rate_limit", "label_only",
                         "input_name", "output_name", "max_batch", "binary"})
    counts_queries = True

    def __init__(self, url: str, *, token_env: str | None = "MODELSEAL_TOKEN", timeout: float = 30.0,
                 retries: int = 3, backoff: float = 0.5, rate_limit: float | None = None,
                 label_only: bool | None = None, input_name: str | None = None,
                 output_name: str | None = None, max_batch: int | None = None, binary: bool | None = None):
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 -- raises ValueError on a port that is not a number in 0..65535
        except (ValueError, TypeError) as e:
            raise SuspectError(f"{url!r} is not a valid URL: {e}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SuspectError(f"{url!r} is not an http(s) URL; use http://host:port/v2/models/NAME")
        if parts.username or parts.password:
            raise SuspectError("credentials inside the URL are refused; put the bearer token in an "
                               "environment variable and pass its name as token_env (--token-env)")
        path = re.sub(r"/(infer|ready)$", "", parts.path.rstrip("/"))
        m = re.fullmatch(r"(/.*)?/v2/models/[^/]+(/versions/[^/]+)?", path)
        if not m:
            raise SuspectError(f"{parts.scheme}://{parts.netloc}{parts.path} is not a v2 model URL; use "
                               "http://host:port/v2/models/NAME")
        self.timeout = float(number("timeout", timeout, 0, _MAX_TIMEOUT, lo_open=True, error=SuspectError))
        self.retries = count("retries", retries, 0, 100, error=SuspectError)
        self.backoff = float(number("backoff", backoff, 0, 3600, error=SuspectError))
        self.rate_limit = (None if rate_limit is None else
                           float(number("rate_limit", rate_limit, 0, 1e6, lo_open=True, error=SuspectError)))
        self.max_batch = None if max_batch is None else count("max_batch", max_batch, 1, MAX_BATCH,
                                                              error=SuspectError)
        for opt, val in (("input_name", input_name), ("output_name", output_name)):
            if val is not None and (not isinstance(val, str) or not val):
                raise SuspectError(f"{opt} must be a non-empty string, got {val!r}")
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.path = path
        self.url = f"{parts.scheme}://{parts.netloc}{path}"
        self.input_name = input_name
        self.output_name = output_name
        self.token_env = token_env
        self.__token = os.environ.get(token_env) if token_env else None
        if self.__token is not None and not self.__token.strip():
            self.__token = None
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self.requests = 0
        self.input_shape: tuple[int, ...] | None = None
        self.input_datatype = "FP32"
        self.output_shape: tuple[int, ...] | None = None
        self.output_datatype: str | None = None
        self.metadata: dict[str, Any] = {}
        self.server_metadata: dict[str, Any] = {}
        self.label_only = bool(label_only)
        self._read_server_metadata(path[: path.index("/v2/models/")] + "/v2")
        self._read_metadata(label_only)
        extensions = self.server_metadata.get("extensions")
        self.binary = (bool(binary) if binary is not None else
                       isinstance(extensions, list) and oip.BINARY_EXTENSION in extensions)

    # ----------------------------------------------------------------- public
    @property
    def output_size(self) -> int | None:
        """Values per example from the metadata (None when unknown or label-only)."""
        if self.label_only or self.output_shape is None:
            return None
        return math.prod(self.output_shape)

    def ready(self) -> bool:
        """True if `GET {url}/ready` answers 200."""
        status, _, _ = self._request("GET", self.path + "/ready", what="readiness check")
        return status == 200

    def __call__(self, x: torch.Tensor, charge: Callable[[int], None] | None = None) -> torch.Tensor:
        """Outputs for the batch `x`; `charge(n)` is called right before each request that sends n inputs."""
        if not isinstance(x, torch.Tensor):
            raise SuspectError(f"a remote suspect takes a tensor, got {type(x).__name__}")
        n = self.max_batch or max(1, len(x))
        outs = [self._infer(x[i : i + n], charge) for i in range(0, len(x), n)]
        return torch.cat(outs) if outs else torch.empty(0)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __repr__(self) -> str:
        auth = f", token from ${self.token_env}" if self.__token is not None else ""
        return f"RemoteBackend({self.url}{auth}{', label-only' if self.label_only else ''})"

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a RemoteBackend holds a connection and a token and cannot be pickled or copied")

    # ----------------------------------------------------------------- metadata
    def _get_json(self, path: str, what: str, missing: str, fatal: tuple[int, ...] = ()) -> dict[str, Any] | None:
        """GET `path` and parse a JSON object; None (logged: `missing`) when the server has none to give.
        A status in `fatal` is an error."""
        status, body, _ = self._request("GET", path, what=what)
        if status in fatal:
            raise SuspectError(self._status_message(status, body))
        if status != 200:
            log.debug("%s unavailable (HTTP %s); %s", what, status, missing)
            return None
        try:
            meta = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply
            log.debug("%s is not JSON; %s", what, missing)
            return None
        return meta if isinstance(meta, dict) else None

    def _read_server_metadata(self, path: str) -> None:
        meta = self._get_json(path, "server metadata", "assuming JSON tensors only")
        if meta is not None:
            self.server_metadata = meta

    def _named(self, entries: list[dict[str, Any]], name: str, kind: str) -> dict[str, Any]:
        """The metadata entry of the input or output (`kind`) called `name`, or one error listing the names."""
        names = [e.get("name") for e in entries]
        if name not in names:
            raise SuspectError(self._mask(f"{self.url} has no {kind} {name!r}; its metadata declares {names} "
                                          f"(--{kind}-name)"))
        return entries[names.index(name)]

    def _read_metadata(self, label_only: bool | None) -> None:
        meta = self._get_json(self.path, "model metadata", "input shape unknown", fatal=(401, 403, 404))
        if meta is None:
            return
        self.metadata = meta
        inputs = _entries(meta, "inputs")
        if inputs:
            if self.input_name is not None:
                inp = self._named(inputs, self.input_name, "input")
            elif len(inputs) > 1:
                raise SuspectError(self._mask(f"{self.url} declares {len(inputs)} inputs "
                                              f"{[i.get('name') for i in inputs]}; modelseal sends one tensor, "
                                              "so it can judge single-input models only"))
            else:
                inp = inputs[0]
            if isinstance(inp.get("name"), str):
                self.input_name = inp["name"]
            try:
                self.input_datatype = oip.datatype(inp.get("datatype") or "FP32")
            except oip.TensorError as e:
                raise SuspectError(self._mask(f"{self.url} input {self.input_name!r}: {e}")) from None
            self.input_shape = _strip_batch(inp.get("shape"))
        outputs = _entries(meta, "outputs")
        out_meta: dict[str, Any] | None = None
        if outputs:
            if self.output_name is not None:
                out_meta = self._named(outputs, self.output_name, "output")
            else:
                floats = [o for o in outputs if str(o.get("datatype", "")).upper() in oip.FLOAT_TYPES]
                out_meta = (floats or outputs)[0]
                if isinstance(out_meta.get("name"), str):
                    self.output_name = out_meta["name"]
        if out_meta is not None:
            self.output_shape = _strip_batch(out_meta.get("shape"))
            self.output_datatype = str(out_meta.get("datatype", "")).upper() or None
        params = meta.get("parameters")
        meta_label_only = (isinstance(params, dict) and params.get("label_only") is True) or (
            self.output_datatype in oip.INT_TYPES or self.output_datatype == "BOOL")
        if label_only is None:
            self.label_only = bool(meta_label_only)

    # ----------------------------------------------------------------- inference
    def _infer(self, xb: torch.Tensor, charge: Callable[[int], None] | None) -> torch.Tensor:
        arr = xb.detach().cpu().numpy().astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise SuspectError("refusing to send NaN or infinite inputs to the remote suspect")
        dt = self.input_datatype
        try:
            values = oip.from_float32(arr, dt, what="the inputs")
            tensor: dict[str, Any] = {"name": self.input_name or "input", "shape": list(arr.shape), "datatype": dt}
            if self.binary:
                raw = oip.to_binary(values, dt)
                tensor["parameters"] = {"binary_data_size": len(raw)}
            else:
                tensor["data"] = oip.to_json_data(values, dt)
        except oip.TensorError as e:
            raise SuspectError(self._mask(f"{self.url}: {e}")) from None
        request: dict[str, Any] = {"inputs": [tensor]}
        if self.output_name is not None:
            request["outputs"] = [{"name": self.output_name,
                                   **({"parameters": {"binary_data": True}} if self.binary else {})}]
        elif self.binary:
            request["parameters"] = {"binary_data_output": True}
        head = json.dumps(request, separators=(",", ":")).encode()
        if self.binary:
            body = head + raw
            headers = {"Content-Type": "application/octet-stream", oip.HEADER_LENGTH: str(len(head))}
        else:
            body, headers = head, {"Content-Type": "application/json"}
        status, answer, resp_headers = self._request("POST", self.path + "/infer", body, headers,
                                                     what="inference", charge=charge, inputs=len(arr))
        if status != 200:
            raise SuspectError(self._status_message(status, answer))
        return self._parse_outputs(answer, resp_headers.get(oip.HEADER_LENGTH.lower()), len(arr))

    def _parse_outputs(self, raw: bytes, header_length: str | None, batch: int) -> torch.Tensor:
        try:
            resp, tail = oip.split_body(raw, header_length)
        except oip.TensorError:
            raise SuspectError(self._mask(f"{self.url} answered with non-JSON ({_snippet(raw, self._mask)}); is "
                                          "this an Open Inference Protocol (v2) endpoint?")) from None
        outputs = resp.get("outputs")
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, dict) for o in outputs):
            raise SuspectError(f"{self.url} answered without an 'outputs' list; is it a v2 endpoint?")
        try:
            slices = oip.binary_slices(outputs, tail)
        except oip.TensorError as e:
            raise SuspectError(self._mask(f"{self.url} answered malformed binary data: {e}")) from None
        idx = 0
        if self.output_name is not None:
            names = [o.get("name") for o in outputs]
            if self.output_name not in names:
                raise SuspectError(self._mask(f"{self.url} answered without output {self.output_name!r}, which "
                                              f"was asked for; it sent {names}"))
            idx = names.index(self.output_name)
        out = outputs[idx]
        shape = out.get("shape")
        if (not isinstance(shape, list) or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise SuspectError(self._mask(f"{self.url} answered with a malformed output shape {shape!r}"))
        if shape[0] != batch:
            raise SuspectError(f"{self.url} answered {shape[0]} outputs for {batch} inputs (shape {shape}); "
                               "the server does not batch like the protocol says")
        try:
            dt = oip.datatype(out.get("datatype"))
        except oip.TensorError as e:
            raise SuspectError(self._mask(f"{self.url} answered with datatype {out.get('datatype')!r}: {e}")) \
                from None
        try:
            _, values = oip.read_tensor(out, slices[idx])
        except oip.TensorError as e:
            raise SuspectError(self._mask(f"{self.url} answered unreadable output data: {e}")) from None
        if dt in oip.FLOAT_TYPES:
            try:  # NaN/inf pass through the conversion unchanged and are refused just below
                floats = oip.to_float32(values, dt, what="the output", round_fp64=True)
            except oip.TensorError as e:
                raise SuspectError(f"{self.url}: {e}") from None
            if not np.isfinite(floats).all():
                raise SuspectError(f"{self.url} returned NaN or infinite outputs")
            if self.label_only and floats.ndim == 1:
                return torch.from_numpy(np.round(floats).astype(np.int64))
            return torch.from_numpy(np.ascontiguousarray(floats))
        if values.ndim > 2 or (values.ndim == 2 and values.shape[1] != 1):
            raise SuspectError(f"{self.url} answered {dt} outputs of shape {shape}; integer outputs are read "
                               "as labels and must have shape [batch]")
        if dt == "UINT64" and values.size and values.max() > np.iinfo(np.int64).max:
            raise SuspectError(f"{self.url} answered UINT64 labels beyond the INT64 range")
        self.label_only = True
        return torch.from_numpy(values.reshape(batch).astype(np.int64))

    def _status_message(self, status: int, raw: bytes) -> str:
        detail = _error_text(raw, self._mask)
        if status in (401, 403):
            hint = (f"the token in ${self.token_env} was refused" if self.__token is not None
                    else "set the bearer token in the environment variable "
                    f"{self.token_env or 'MODELSEAL_TOKEN'}")
            return self._mask(f"{self.url} refused the request ({status}): {hint}")
        if status == 404:
            return self._mask(f"{self.url} does not exist on the server (404"
                              + (f": {detail}" if detail else "") + "); check the model name and version")
        if status == 400:
            return self._mask(f"{self.url} rejected the request (400: {detail}); is the key for this model?")
        return self._mask(f"{self.url} answered HTTP {status}" + (f" ({detail})" if detail else ""))

    # ----------------------------------------------------------------- transport
    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                 *, what: str, charge: Callable[[int], None] | None = None,
                 inputs: int = 0) -> tuple[int, bytes, dict[str, str]]:
        """One HTTP exchange with bounded retries inside one deadline; returns (status, body, headers)."""
        with self._lock:
            deadline = time.monotonic() + self.timeout
            attempt = 0
            first: str | None = None
            refused_only = True
            while True:
                self._wait_rate(deadline, what, first)
                retry_after: str | None = None
                try:
                    status, raw, resp_headers = self._exchange(method, path, body, headers or {}, deadline,
                                                               charge, inputs)
                except SuspectError:  # BudgetExceeded included: nothing was sent
                    self.close()
                    raise
                except _DeadlinePassed:
                    self.close()
                    raise SuspectError(self._deadline_message(what, first)) from None
                except (OSError, http.client.HTTPException) as e:
                    self.close()
                    if isinstance(e, TimeoutError) or time.monotonic() >= deadline:
                        raise SuspectError(self._deadline_message(what, first)) from None
                    refused = isinstance(e, ConnectionRefusedError)
                    refused_only = refused_only and refused
                    failure = (f"connection refused ({type(e).__name__})" if refused else
                               f"connection dropped ({type(e).__name__})")
                else:
                    if status not in _RETRY_STATUS:
                        return status, raw, resp_headers
                    refused_only = False
                    failure = self._status_message(status, raw).replace(f"{self.url} answered ", "")
                    retry_after = resp_headers.get("retry-after")
                first = first or failure
                attempts = f"{attempt + 1} attempt{'s' if attempt else ''}"
                summary = first + (f"; last: {failure}" if failure != first else "")
                if attempt >= self.retries:
                    hint = "; is the server running?" if refused_only else ""
                    raise SuspectError(self._mask(f"{what} at {self.url} failed after {attempts}: {summary}{hint}"))
                wait = self._delay(attempt, retry_after)
                left = deadline - time.monotonic()
                if wait > left:
                    why = (f"the server asked to retry after {wait:g}s (Retry-After)" if retry_after is not None
                           else f"the next retry would start in {wait:g}s")
                    raise SuspectError(self._mask(
                        f"{what} at {self.url} failed after {attempts}: {summary}; {why}, past the "
                        f"{self.timeout:g}s deadline (raise --timeout)"))
                log.info("%s", self._mask(f"{what} at {self.url}: {failure}; retrying in {wait:.2f}s "
                                          f"(attempt {attempt + 2} of {self.retries + 1})"))
                time.sleep(wait)
                attempt += 1

    def _exchange(self, method: str, path: str, body: bytes | None, extra: dict[str, str], deadline: float,
                  charge: Callable[[int], None] | None, inputs: int) -> tuple[int, bytes, dict[str, str]]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _DeadlinePassed
        if self._conn is not None and self._conn.sock is not None and _stale(self._conn.sock):
            self.close()  # the server closed the idle keep-alive connection; do not send into it
        if self._conn is None:
            if self.scheme == "https":
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=left,
                                                         context=ssl.create_default_context())
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=left)
        conn = self._conn
        if conn.sock is None:
            conn.timeout = left
            conn.connect()  # before charging: a refused connection sends nothing
        headers = {"Accept": "application/json", "User-Agent": "modelseal", **extra}
        if self.__token is not None:
            headers["Authorization"] = "Bearer " + self.__token
        if charge is not None and inputs:
            charge(inputs)  # the inputs leave now; counted whether or not an answer comes back
        sock = conn.sock
        fired = threading.Event()

        def abort() -> None:
            fired.set()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), abort)
        watchdog.daemon = True
        watchdog.start()
        try:
            sock.settimeout(max(1e-3, deadline - time.monotonic()))
            self.requests += 1
            conn.request(method, path, body=body, headers=headers)
            sock.settimeout(max(1e-3, deadline - time.monotonic()))
            resp = conn.getresponse()
            raw = self._read_body(resp, sock, deadline)
        except (OSError, http.client.HTTPException):
            if fired.is_set():
                raise _DeadlinePassed from None
            raise
        finally:
            watchdog.cancel()
        if resp.will_close or fired.is_set():  # a complete answer stands even if the watchdog fired just after
            self.close()
        return resp.status, raw, {k.lower(): v for k, v in resp.getheaders()}

    def _read_body(self, resp: http.client.HTTPResponse, sock: socket.socket, deadline: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _DeadlinePassed
            sock.settimeout(max(1e-3, left))
            chunk = resp.read1(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > _MAX_BODY:
                self.close()
                raise SuspectError(f"{self.url} answered more than {_MAX_BODY // 2**20} MiB; refusing to read it")
            chunks.append(chunk)
        chunks.append(resp.read())  # b"", and marks the response done so the connection can be reused
        raw = b"".join(chunks)
        length = resp.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) != len(raw):
            raise http.client.IncompleteRead(raw, int(length) - len(raw))
        return raw

    def _deadline_message(self, what: str, first: str | None) -> str:
        before = f" (earlier: {first})" if first else ""
        return self._mask(f"{what} at {self.url} did not finish within the {self.timeout:g}s deadline{before}; "
                          "raise the timeout (--timeout) or check the server")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            text = retry_after.strip()
            if text.isdigit():
                return float(text)
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None and when.tzinfo is not None:
                return max(0.0, when.timestamp() - time.time())
        return self.backoff * (2 ** attempt)

    def _wait_rate(self, deadline: float, what: str, first: str | None) -> None:
        if not self.rate_limit:
            return
        now = time.monotonic()
        if self._next_slot > deadline:
            raise SuspectError(self._mask(
                f"{what} at {self.url}: the rate limit ({self.rate_limit:g}/s) leaves no request slot before the "
                f"{self.timeout:g}s deadline" + (f" (earlier: {first})" if first else "")))
        if now < self._next_slot:
            time.sleep(self._next_slot - now)
            now = self._next_slot
        self._next_slot = now + 1.0 / self.rate_limit

    def _mask(self, text: str) -> str:
        return mask_secret(text, self.__token)


class _DeadlinePassed(Exception):
    pass


def mask_secret(text: str, secret: str | None, min_len: int = 4) -> str:
    """`text` with `secret`, and every run of `min_len`+ characters that starts it, replaced by `***`."""
    if not secret:
        return text
    head = secret[:min_len]
    out: list[str] = []
    i = 0
    while True:
        j = text.find(head, i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        k = len(head)
        while k < len(secret) and j + k < len(text) and text[j + k] == secret[k]:
            k += 1
        out += [text[i:j], "***"]
        i = j + k


def _entries(meta: dict[str, Any], field: str) -> list[dict[str, Any]]:
    """The object entries of a metadata list (`inputs`, `outputs`); [] when it is absent or not a list."""
    items = meta.get(field)
    return [e for e in items if isinstance(e, dict)] if isinstance(items, list) else []


def _stale(sock: socket.socket) -> bool:
    """An idle keep-alive socket that is readable has been closed by the server (or holds garbage)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _strip_batch(shape: Any) -> tuple[int, ...] | None:
    """Per-example shape from a v2 metadata shape, whose first dimension is the batch (-1)."""
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) for d in shape):
        return None
    rest = tuple(shape[1:])
    return rest if all(d > 0 for d in rest) else None


def _error_text(raw: bytes, mask: Callable[[str], str]) -> str:
    """The server's error text, masked first and cut to one line of 200 characters after."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply
        return _snippet(raw, mask)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        lines = mask(body["error"]).splitlines()
        return lines[0][:200] if lines else ""
    if isinstance(body, dict) and isinstance(body.get("detail"), str):  # FastAPI-style servers (MLServer)
        lines = mask(body["detail"]).splitlines()
        return lines[0][:200] if lines else ""
    return _snippet(raw, mask)


def _snippet(raw: bytes, mask: Callable[[str], str]) -> str:
    lines = mask(raw[:4096].decode("utf-8", "replace")).splitlines()
    return repr(lines[0][:80] if lines else "")
