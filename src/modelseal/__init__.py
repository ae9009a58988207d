"""modelseal: protect the intellectual property in trained neural networks.

Watermarks (trigger-set), per-user fingerprints (DeepMarks), model recognition without changing the
model (characteristic examples, TAFA), parameter locks (AdvParams), verdicts with p-values on weights,
ONNX files or remote endpoints, and a robustness benchmark against removal attacks.
"""

from . import attacks, commitment, data, methods, models, runtime, stats, train
from ._version import __version__
from .api import trace, unlock, verify
from .errors import ModelSealError
from .keys import Key
from .suspect import Suspect
from .verdict import Verdict

__all__ = ["attacks", "commitment", "data", "methods", "models", "runtime", "stats", "train", "verify", "trace",
           "unlock", "Key", "Suspect", "Verdict", "ModelSealError", "__version__"]
