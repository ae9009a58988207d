"""Registry of protection methods. `get(name)` returns the class, `names()` lists them.

Methods live in `modelseal.watermark`, `modelseal.fingerprint` and `modelseal.lock`; each registers
itself with `@register("name")`. The bench, the CLI and the demo reach methods only through here.
"""

from __future__ import annotations

import importlib
import importlib.util

from ..errors import RegistryError

_REGISTRY: dict[str, type] = {}
# Where each known method lives: imported on first use so that `import modelseal` stays light.
_MODULES = {
    "trigger-set": "modelseal.watermark.trigger_set",
    "deepmarks": "modelseal.watermark.deepmarks",
    "c-examples": "modelseal.fingerprint.characteristic",
    "tafa": "modelseal.fingerprint.tafa",
    "advparams": "modelseal.lock.advparams",
}


def register(name: str):
    def deco(cls: type) -> type:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _available() -> dict[str, str]:
    out = {}
    for name, mod in _MODULES.items():
        if importlib.util.find_spec(mod) is not None:
            out[name] = mod
    return out


def get(name: str) -> type:
    """The method class registered as `name`."""
    if name not in _REGISTRY:
        mod = _available().get(name)
        if mod is None:
            raise RegistryError(f"unknown method '{name}'; known: {', '.join(names()) or 'none'}")
        importlib.import_module(mod)
    if name not in _REGISTRY:
        raise RegistryError(f"module for method '{name}' did not register it")
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(set(_available()) | set(_REGISTRY))
