"""modelseal: protect the intellectual property in trained neural networks.

Watermarks (trigger-set), per-user fingerprints (DeepMarks), model recognition without changing the
model (characteristic examples, TAFA), parameter locks (AdvParams), verdicts with p-values on weights,
ONNX files or remote endpoints, and a robustness benchmark against removal attacks.

Submodules and the names below load on first use (PEP 562 module `__getattr__`), so that `import modelseal`
and `modelseal --help` do not import torch; `ms.verify`, `ms.data` and friends work as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

_SUBMODULES = {"attacks", "commitment", "data", "evidence", "guard", "lineage", "methods", "models", "runtime",
               "schema", "stats", "timestamp", "train"}
# public name -> the submodule that defines it
_NAMES = {
    "verify": "api", "trace": "api", "unlock": "api",
    "Key": "keys", "Suspect": "suspect", "Verdict": "verdict", "ModelSealError": "errors",
}

__all__ = sorted(_SUBMODULES | set(_NAMES) | {"__version__"})

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load lazily
    from . import (  # noqa: F401
        attacks,
        commitment,
        data,
        evidence,
        guard,
        lineage,
        methods,
        models,
        runtime,
        schema,
        stats,
        timestamp,
        train,
    )
    from .api import trace, unlock, verify  # noqa: F401
    from .errors import ModelSealError  # noqa: F401
    from .keys import Key  # noqa: F401
    from .suspect import Suspect  # noqa: F401
    from .verdict import Verdict  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'modelseal' has no attribute {name!r}")


def __dir__() -> list[str]:
    # the public names only: not the helpers this module imports (importlib, Any, TYPE_CHECKING)
    return sorted(set(__all__) | {n for n in globals() if n.startswith("__") and n.endswith("__")})
