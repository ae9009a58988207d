"""What a suspect's source string is, and the options of a remote suspect, read without torch.

`source_kind(source)` is the one test of a source: "url" (it starts with http:// or https://), "onnx" (a file
whose suffix is .onnx, any case) or "file" (a modelseal or state-dict .safetensors model file). `RemoteOptions`
holds how a suspect is asked: a query budget and reshaping for every suspect, and the http(s) options.
`modelseal.suspect` re-exports both and opens a source with them (`open_source`); they live in this module,
which imports neither torch nor numpy, so that the command line can check a source before torch is imported.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

URL_SCHEMES = ("http://", "https://")

SourceKind = Literal["url", "onnx", "file"]


def source_text(source: str | os.PathLike) -> str:
    """A source as a string; a path keeps a URL's '//' (turning a URL into a Path folds it to '/')."""
    if isinstance(source, os.PathLike):
        return re.sub(r"^(https?):/(?!/)", r"\1://", os.fspath(source))
    return str(source)


def source_kind(source: str | os.PathLike) -> SourceKind:
    """"url", "onnx" or "file": the one place that tells what a suspect source is."""
    s = source_text(source)
    if s.startswith(URL_SCHEMES):
        return "url"
    return "onnx" if Path(s).suffix.lower() == ".onnx" else "file"


@dataclass(frozen=True)
class RemoteOptions:
    """How a suspect is asked. `max_queries` (the query budget) and `reshape` (send inputs in the model's
    declared shape when the sizes match) apply to every suspect; the other fields to http(s) suspects only
    (`modelseal.suspect.remote.RemoteBackend` documents them; None means its default). A file suspect given an
    http-only option is refused (`http_given` names them as the command line spells them)."""

    max_queries: int | None = None
    reshape: bool = False
    token_env: str | None = "MODELSEAL_TOKEN"
    timeout: float | None = None
    retries: int | None = None
    rate_limit: float | None = None
    input_name: str | None = None
    output_name: str | None = None
    max_batch: int | None = None
    label_only: bool = False

    # the http-only options a file suspect refuses when given, in the order a refusal names them
    HTTP_ONLY: ClassVar[tuple[str, ...]] = ("timeout", "retries", "rate_limit", "input_name", "output_name",
                                            "max_batch", "label_only")

    @staticmethod
    def flag(name: str) -> str:
        """The command-line flag of a field: `rate_limit` -> `--rate-limit`."""
        return "--" + name.replace("_", "-")

    def http_given(self) -> list[str]:
        """The flags of the http-only options that were given (set to something other than their default)."""
        return [self.flag(n) for n in self.HTTP_ONLY if getattr(self, n) not in (None, False)]

    def suspect_kwargs(self) -> dict[str, Any]:
        """The options every Suspect takes."""
        return {"max_queries": self.max_queries, "reshape": self.reshape}

    def backend_kwargs(self) -> dict[str, Any]:
        """The options of an http(s) backend that were given (a missing one keeps the backend's default; an
        unset `label_only` lets the served metadata decide)."""
        kw: dict[str, Any] = {"token_env": self.token_env, "label_only": True if self.label_only else None}
        kw.update({n: getattr(self, n) for n in self.HTTP_ONLY if n != "label_only" and getattr(self, n) is not None})
        return kw
