"""Remote suspects over the Open Inference Protocol (KServe v2 / Triton HTTP/REST, JSON tensors).

`Suspect.load("http://host:port/v2/models/NAME")` builds a `RemoteBackend`: every batch becomes one
`POST {url}/infer` with one FP32 input tensor; the model metadata (`GET {url}`) gives the input shape and
tells whether the endpoint is label-only. The query budget is enforced by `Suspect` before a batch is
sent, so a server never sees more inputs than the budget.

Where modelseal deviates from a full v2 client, and why:
- JSON tensors only (no binary-data extension): verdicts need a few hundred inputs, and float32 values
  survive a JSON round trip exactly, so remote verdicts equal in-process ones bit for bit.
- Retries (bounded, exponential backoff, `Retry-After` honoured up to a cap) happen on 429, 5xx and
  dropped connections only. A timeout is final: the server may still be computing, and retrying would
  multiply the wait; raise `timeout` instead. `timeout` applies to each socket operation.
- A bearer token is read from an environment variable named by the user (default `MODELSEAL_TOKEN`),
  never taken as an argument, so it cannot end up in shell history, keys, reports, reprs or messages
  (any echo of it in a server's error text is masked). Credentials inside the URL are refused.
- No HTTP proxy support: the connection goes straight to the host in the URL.
- An endpoint is label-only when its metadata says so (`parameters.label_only`, or an integer output
  datatype), when the user says so (`label_only=True`), or once it answers with integer labels of
  shape [batch]; methods that need raw outputs refuse such suspects via `Suspect.require_outputs`.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import re
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from ..errors import SuspectError

log = logging.getLogger(__name__)

_FLOAT_TYPES = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BF16": np.float32}
_INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_RETRY_STATUS = {429, 500, 502, 503, 504}
_MAX_BODY = 256 * 1024 * 1024
_MAX_WAIT = 30.0


class RemoteBackend:
    """A black-box suspect behind an Open Inference Protocol endpoint; callable on a batch of inputs."""

    OPTIONS = frozenset({"token_env", "timeout", "retries", "backoff", "rate_limit", "label_only",
                         "input_name", "output_name", "max_batch"})

    def __init__(self, url: str, *, token_env: str | None = "MODELSEAL_TOKEN", timeout: float = 30.0,
                 retries: int = 3, backoff: float = 0.5, rate_limit: float | None = None,
                 label_only: bool | None = None, input_name: str | None = None,
                 output_name: str | None = None, max_batch: int | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SuspectError(f"{url!r} is not an http(s) URL; use http://host:port/v2/models/NAME")
        if parts.username or parts.password:
            raise SuspectError("credentials inside the URL are refused; put the bearer token in an "
                               "environment variable and pass its name as token_env (--token-env)")
        path = parts.path.rstrip("/")
        path = re.sub(r"/(infer|ready)$", "", path)
        if not re.fullmatch(r"(/.*)?/v2/models/[^/]+(/versions/[^/]+)?", path):
            raise SuspectError(f"{parts.scheme}://{parts.netloc}{parts.path} is not a v2 model URL; use "
                               "http://host:port/v2/models/NAME")
        if timeout is None or not timeout > 0:
            raise SuspectError(f"timeout must be a positive number of seconds, got {timeout}")
        if retries is None or int(retries) < 0:
            raise SuspectError(f"retries must be >= 0, got {retries}")
        if backoff is None or backoff < 0:
            raise SuspectError(f"backoff must be >= 0 seconds, got {backoff}")
        if rate_limit is not None and not rate_limit > 0:
            raise SuspectError(f"rate_limit must be a positive rate (requests per second), got {rate_limit}")
        if max_batch is not None and int(max_batch) < 1:
            raise SuspectError(f"max_batch must be >= 1, got {max_batch}")
        self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
        self.path = path
        self.url = f"{parts.scheme}://{parts.netloc}{path}"
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.rate_limit = rate_limit
        self.input_name = input_name
        self.output_name = output_name
        self.max_batch = int(max_batch) if max_batch is not None else None
        self.token_env = token_env
        self.__token = os.environ.get(token_env) if token_env else None
        if self.__token is not None and not self.__token.strip():
            self.__token = None
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._next_slot = 0.0
        self.requests = 0
        self.input_shape: tuple[int, ...] | None = None
        self.output_shape: tuple[int, ...] | None = None
        self.metadata: dict[str, Any] = {}
        self.label_only = bool(label_only)
        self._read_metadata(label_only)

    # ----------------------------------------------------------------- public
    @property
    def output_size(self) -> int | None:
        """Values per example from the metadata (None when unknown or label-only)."""
        if self.label_only or self.output_shape is None:
            return None
        return math.prod(self.output_shape)

    def ready(self) -> bool:
        """True if `GET {url}/ready` answers 200."""
        status, _ = self._request("GET", self.path + "/ready", None, what="readiness check")
        return status == 200

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise SuspectError(f"a remote suspect takes a tensor, got {type(x).__name__}")
        n = self.max_batch or max(1, len(x))
        outs = [self._infer(x[i : i + n]) for i in range(0, len(x), n)]
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

    # ----------------------------------------------------------------- protocol
    def _read_metadata(self, label_only: bool | None) -> None:
        status, body = self._request("GET", self.path, None, what="model metadata")
        if status == 404:
            raise SuspectError(self._status_message(404, body))
        if status in (401, 403):
            raise SuspectError(self._status_message(status, body))
        if status != 200:
            log.debug("model metadata unavailable (HTTP %s); input shape unknown", status)
            return
        try:
            meta = json.loads(body)
        except ValueError:
            log.debug("model metadata is not JSON; input shape unknown")
            return
        if not isinstance(meta, dict):
            return
        self.metadata = meta
        inputs = meta.get("inputs")
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
            inp = inputs[0]
            if self.input_name is None and isinstance(inp.get("name"), str):
                self.input_name = inp["name"]
            self.input_shape = _strip_batch(inp.get("shape"))
        outputs = meta.get("outputs")
        out_meta: dict[str, Any] | None = None
        if isinstance(outputs, list) and outputs:
            named = [o for o in outputs if isinstance(o, dict) and o.get("name") == self.output_name]
            out_meta = named[0] if named else outputs[0] if isinstance(outputs[0], dict) else None
        if out_meta is not None:
            self.output_shape = _strip_batch(out_meta.get("shape"))
        params = meta.get("parameters")
        meta_label_only = (isinstance(params, dict) and params.get("label_only") is True) or (
            out_meta is not None and str(out_meta.get("datatype", "")).upper() in _INT_TYPES)
        if label_only is None:
            self.label_only = bool(meta_label_only)

    def _infer(self, xb: torch.Tensor) -> torch.Tensor:
        arr = xb.detach().cpu().numpy().astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise SuspectError("refusing to send NaN or infinite inputs to the remote suspect")
        request = {"inputs": [{"name": self.input_name or "input", "shape": list(arr.shape),
                               "datatype": "FP32", "data": arr.reshape(-1).tolist()}]}
        if self.output_name:
            request["outputs"] = [{"name": self.output_name}]
        body = json.dumps(request, separators=(",", ":")).encode()
        status, raw = self._request("POST", self.path + "/infer", body, what="inference")
        if status != 200:
            raise SuspectError(self._status_message(status, raw))
        return self._parse_outputs(raw, len(arr))

    def _parse_outputs(self, raw: bytes, batch: int) -> torch.Tensor:
        try:
            resp = json.loads(raw)
        except ValueError:
            raise SuspectError(f"{self.url} answered with non-JSON ({_snippet(raw)}); is this an Open "
                               "Inference Protocol (v2) endpoint?") from None
        outputs = resp.get("outputs") if isinstance(resp, dict) else None
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, dict) for o in outputs):
            raise SuspectError(f"{self.url} answered without an 'outputs' list; is it a v2 endpoint?")
        out = outputs[0]
        if self.output_name is not None:
            named = [o for o in outputs if o.get("name") == self.output_name]
            if not named:
                raise SuspectError(f"{self.url} answered without output {self.output_name!r}; it sent "
                                   f"{[o.get('name') for o in outputs]}")
            out = named[0]
        shape, dtype, data = out.get("shape"), str(out.get("datatype", "")).upper(), out.get("data")
        if (not isinstance(shape, list) or not shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise SuspectError(f"{self.url} answered with a malformed output shape {shape!r}")
        if shape[0] != batch:
            raise SuspectError(f"{self.url} answered {shape[0]} outputs for {batch} inputs (shape {shape}); "
                               "the server does not batch like the protocol says")
        if dtype not in _FLOAT_TYPES and dtype not in _INT_TYPES:
            raise SuspectError(f"{self.url} answered with datatype {dtype or 'none'!r}; expected FP32 "
                               "outputs or INT64 labels")
        if not isinstance(data, list):
            raise SuspectError(f"{self.url} answered without a 'data' list in its output")
        try:
            values = np.asarray(data, dtype=np.float64).reshape(-1)
        except (ValueError, TypeError):
            raise SuspectError(f"{self.url} answered with non-numeric output data") from None
        if values.size != math.prod(shape):
            raise SuspectError(f"{self.url} answered {values.size} values for an output of shape {shape}")
        if not np.isfinite(values).all():
            raise SuspectError(f"{self.url} returned NaN or infinite outputs")
        values = values.reshape(shape)
        if dtype in _INT_TYPES:
            if values.ndim > 2 or (values.ndim == 2 and values.shape[1] != 1):
                raise SuspectError(f"{self.url} answered integer outputs of shape {shape}; integer outputs "
                                   "are read as labels and must have shape [batch]")
            if not (values == np.round(values)).all():
                raise SuspectError(f"{self.url} answered {dtype} outputs that are not integers")
            self.label_only = True
            return torch.from_numpy(values.reshape(batch).astype(np.int64))
        if self.label_only and values.ndim == 1:
            return torch.from_numpy(np.round(values).astype(np.int64))
        return torch.from_numpy(values.astype(np.float32))

    def _status_message(self, status: int, raw: bytes) -> str:
        detail = _error_text(raw)
        if status in (401, 403):
            hint = (f"the token in ${self.token_env} was refused" if self.__token is not None
                    else "set the bearer token in the environment variable "
                    f"{self.token_env or 'MODELSEAL_TOKEN'}")
            return self._mask(f"{self.url} refused the request ({status}): {hint}")
        if status == 404:
            return self._mask(f"{self.url} does not exist on the server (404); check the model name")
        if status == 400:
            return self._mask(f"{self.url} rejected the request (400: {detail}); is the key for this model?")
        return self._mask(f"{self.url} answered HTTP {status}" + (f" ({detail})" if detail else "")
                          + (f" after {self.retries + 1} attempts" if status in _RETRY_STATUS else ""))

    # ----------------------------------------------------------------- transport
    def _request(self, method: str, path: str, body: bytes | None, *, what: str) -> tuple[int, bytes]:
        """One HTTP exchange with bounded retries; returns (status, body) of the last answer."""
        with self._lock:
            attempt = 0
            while True:
                self._wait_rate()
                try:
                    status, raw, retry_after = self._exchange(method, path, body)
                except TimeoutError:
                    self.close()
                    raise SuspectError(f"{what} at {self.url} timed out after {self.timeout:g}s; raise the "
                                       "timeout (--timeout) or check the server") from None
                except (OSError, http.client.HTTPException) as e:
                    self.close()
                    if attempt >= self.retries:
                        raise SuspectError(self._mask(
                            f"{what} at {self.url} failed after {attempt + 1} attempts: connection failed "
                            f"({type(e).__name__}); is the server running?")) from None
                    wait = self._delay(attempt, None)
                    log.info("%s at %s: connection failed (%s); retrying in %.2fs (attempt %d of %d)",
                             what, self.url, type(e).__name__, wait, attempt + 2, self.retries + 1)
                else:
                    if status not in _RETRY_STATUS or attempt >= self.retries:
                        return status, raw
                    wait = self._delay(attempt, retry_after)
                    log.info("%s at %s: HTTP %d; retrying in %.2fs (attempt %d of %d)",
                             what, self.url, status, wait, attempt + 2, self.retries + 1)
                time.sleep(wait)
                attempt += 1

    def _exchange(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes, str | None]:
        if self._conn is None:
            if self.scheme == "https":
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                         context=ssl.create_default_context())
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        headers = {"Accept": "application/json", "User-Agent": "modelseal"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.__token is not None:
            headers["Authorization"] = "Bearer " + self.__token
        self.requests += 1
        self._conn.request(method, path, body=body, headers=headers)
        resp = self._conn.getresponse()
        raw = resp.read(_MAX_BODY + 1)
        if len(raw) > _MAX_BODY:
            self.close()
            raise SuspectError(f"{self.url} answered more than {_MAX_BODY // 2**20} MiB; refusing to read it")
        length = resp.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) != len(raw):
            raise http.client.IncompleteRead(raw, int(length) - len(raw))  # read(amt) hides a cut-off body
        if resp.will_close:
            self.close()
        return resp.status, raw, resp.getheader("Retry-After")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        wait = self.backoff * (2 ** attempt)
        if retry_after:
            try:
                wait = max(wait, float(retry_after))
            except ValueError:
                pass
        return min(wait, _MAX_WAIT)

    def _wait_rate(self) -> None:
        if not self.rate_limit:
            return
        now = time.monotonic()
        if now < self._next_slot:
            time.sleep(self._next_slot - now)
            now = self._next_slot
        self._next_slot = now + 1.0 / self.rate_limit

    def _mask(self, text: str) -> str:
        return text.replace(self.__token, "***") if self.__token else text


def _strip_batch(shape: Any) -> tuple[int, ...] | None:
    """Per-example shape from a v2 metadata shape, whose first dimension is the batch (-1)."""
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) for d in shape):
        return None
    rest = tuple(shape[1:])
    return rest if all(d > 0 for d in rest) else None


def _error_text(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return _snippet(raw)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"].splitlines()[0][:200] if body["error"] else ""
    return _snippet(raw)


def _snippet(raw: bytes) -> str:
    text = raw[:80].decode("utf-8", "replace").splitlines()
    return repr(text[0] if text else "")
