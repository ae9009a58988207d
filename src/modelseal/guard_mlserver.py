"""An MLServer runtime that serves a modelseal model file through the API watermark (`modelseal.guard`).

Seldon's MLServer (1.x) loads it by name: `"implementation": "modelseal.guard_mlserver.GuardRuntime"` in a
model's model-settings.json, with modelseal importable in MLServer's environment. `mlserver` is imported
only here (modelseal does not depend on it). Settings:

    "parameters": {"uri": "./model.safetensors",
                   "extra": {"guard_key": "./guard.seal",       # a `modelseal guard key` file
                             "guard_log": "./guard-logs",       # an existing folder for the client logs
                             "label_only": false,               # answer INT64 labels instead of scores
                             "client": null}}                   # see below

Paths are relative to the model-settings.json. The answers are those of
`modelseal.suspect.serve.make_app(model, answer_hook=Guard(key, log).serve_hook)`: the model's raw outputs
with the keyed ones changed (scores of the top class and the keyed label swapped), logged per client.

The client: MLServer's REST server forwards the HTTP request headers to a runtime in
`payload.parameters.headers` (`mlserver.utils.insert_headers`, MLServer >= 1.2), so a request's bearer token
(`Authorization: Bearer ...`) names its client exactly as `make_app` does (`guard.client_id`: the SHA-256 of
the token, never the token). A request without one (gRPC, or a gateway that strips the header) is logged
under `extra.client` when the model settings name one (a per-model client: one deployment per customer),
else under "anonymous" as `make_app` does.

One process writes a client's log (the guard keeps each log's chain head in memory): run MLServer with
`"parallel_workers": 0` in settings.json (inference in the server process). Parallel workers would each
append to the same logs and break their hash chains.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

from .guard import Guard, GuardKey, client_id
from .models import load_model

OUTPUT = "output"


def _relative(settings: Any, path: str) -> str:
    source = getattr(settings, "_source", None)
    if os.path.isabs(path) or source is None:
        return path
    return os.path.normpath(os.path.join(os.path.dirname(source), path))


def bearer_of(headers: dict[str, str] | None) -> str | None:
    """The bearer token of forwarded request headers (the header name in any case), or None."""
    for k, v in (headers or {}).items():
        if k.lower() == "authorization" and isinstance(v, str) and v[:7].lower() == "bearer " and v[7:]:
            return v[7:]
    return None


class GuardRuntime(MLModel):
    """A modelseal model file served with its answers guarded and logged per client."""

    async def load(self) -> bool:
        extra = dict((self._settings.parameters.extra if self._settings.parameters else None) or {})
        if "guard_key" not in extra or "guard_log" not in extra:
            raise InferenceError("GuardRuntime needs parameters.extra.guard_key and parameters.extra.guard_log")
        self._model = load_model(await get_model_uri(self._settings)).eval()
        key = GuardKey.load(_relative(self._settings, str(extra["guard_key"])))
        self._guard = Guard(key, _relative(self._settings, str(extra["guard_log"])))
        self._label_only = bool(extra.get("label_only", False))
        self._client = str(extra["client"]) if extra.get("client") else None
        return True

    def client(self, payload: InferenceRequest) -> str:
        """The payload's client: its bearer token's id, else the model's configured client, else anonymous."""
        headers = payload.parameters.headers if payload.parameters is not None else None
        bearer = bearer_of(headers)
        if bearer is None and self._client is not None:
            return self._client
        return client_id(bearer)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        names = [o.name for o in payload.outputs or []]
        if any(n != OUTPUT for n in names):
            raise InferenceError(f"unknown output(s) {names}; this model has '{OUTPUT}'")
        if len(payload.inputs) != 1:
            raise InferenceError("this model takes one input tensor")
        x = np.ascontiguousarray(NumpyCodec.decode_input(payload.inputs[0]), dtype=np.float32)
        if not np.isfinite(x).all():
            raise InferenceError("input data contains NaN or infinite values")
        with torch.no_grad():
            out = self._model(torch.from_numpy(x)).float().numpy()
        served = self._guard.answer(x, out, self.client(payload))
        if self._label_only:
            served = served.reshape(len(served), -1).argmax(1).astype(np.int64)
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 outputs=[NumpyCodec.encode_output(OUTPUT, served)])


__all__ = ["GuardRuntime", "bearer_of"]
