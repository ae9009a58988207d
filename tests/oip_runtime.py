"""An MLServer custom runtime that serves a modelseal model file (a torch module): used by test_oip_mlserver.py.

It runs inside MLServer's own virtual environment (.venv-mlserver), so it imports nothing from pytest.
The model file is named by `parameters.uri` in model-settings.json; it is loaded without pickle.
"""

from __future__ import annotations

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

from modelseal.models import load_model


class TorchRuntime(MLModel):
    async def load(self) -> bool:
        self._model = load_model(await get_model_uri(self._settings)).eval()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        names = [o.name for o in payload.outputs or []]
        if any(n != "logits" for n in names):
            raise InferenceError(f"unknown output(s) {names}; this model has 'logits'")
        x = NumpyCodec.decode_input(payload.inputs[0])
        with torch.no_grad():
            y = self._model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 outputs=[NumpyCodec.encode_output("logits", y)])
