"""`Suspect`: the one door to a model under judgement.

A suspect is a PyTorch module (white-box), a modelseal model file (white-box, loaded without pickle),
an `.onnx` file run by onnxruntime (black-box), or an `http(s)://` Open Inference Protocol endpoint
(black-box, see `modelseal.suspect.remote`). `predict(x)` returns raw outputs on the CPU, batched; `labels(x)`
the top class; `queries` counts every input sent to the model; `module` is None when black-box. A query
budget (`max_queries`) is enforced before any input is sent, and NaN/inf outputs are refused.

Opening: `open_source(source, RemoteOptions(...), device=, arch=)` turns a source string into a Suspect; what
a source is (URL, .onnx file, model file) is decided by `modelseal.sources.source_kind` alone.

Counting: a backend that may send an input more than once (a remote one retries) declares
`counts_queries = True` and is handed `charge(n)`, which it calls right before it sends `n` inputs; `charge`
raises `BudgetExceeded` instead of going over the budget, so `queries` never undercounts what the model saw
and never exceeds `max_queries`. Other backends are charged once per batch.

Reshaping: with `reshape=True`, inputs whose per-example element count equals that of the model's declared
input shape are reshaped to it (e.g. 1x8x8 digits for a scikit-learn model served as [N, 64]); `input_shape`
is then None, since any shape of that size is accepted.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ..errors import BudgetExceeded, ModelSealError, SuspectError, WhiteBoxRequired, first_line
from ..sources import RemoteOptions, source_kind, source_text
from ..validate import count

QueryBudgetExceeded = BudgetExceeded  # the name this module used before errors.BudgetExceeded


class Backend(Protocol):
    """What answers a Suspect's queries: `__call__`, `input_shape` and `label_only`. The optional members a
    Suspect also reads are named, with their defaults, in `BACKEND_DEFAULTS`: `counts_queries` (the backend
    charges queries itself: `__call__(x, charge=fn)` before each send), `output_size` (outputs per input when
    known) and `metadata` (what a server says of its model, recorded in evidence)."""

    input_shape: tuple[int, ...] | None  # the per-example input shape (None: unknown, any)
    label_only: bool  # answers are class labels, not raw outputs

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


BACKEND_DEFAULTS: dict[str, Any] = {"input_shape": None, "label_only": False, "counts_queries": False,
                                    "output_size": None, "metadata": None}


def _backend_attr(backend: Any, name: str) -> Any:
    """`backend.name`, or the protocol's default for a backend that leaves it out (the one place read)."""
    return getattr(backend, name, BACKEND_DEFAULTS[name])


def output_tensor(out: Any) -> torch.Tensor:
    """The prediction tensor of a module's output: a tensor; a mapping's `logits` (a Hugging Face
    `ModelOutput` or a dict), else its first tensor; a tuple's or list's first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or (hasattr(out, "keys") and hasattr(out, "__getitem__")):
        if "logits" in out.keys():
            return output_tensor(out["logits"])
        for k in out.keys():
            if isinstance(out[k], torch.Tensor):
                return out[k]
    if isinstance(out, (tuple, list)) and out:
        return output_tensor(out[0])
    raise SuspectError(f"the model returned {type(out).__name__}, not a tensor (nor a dict, ModelOutput or tuple "
                       "holding one); wrap it so that forward returns the logits")


class _TorchBackend:
    def __init__(self, module: nn.Module, input_shape: tuple[int, ...] | None, device: Any = None,
                 label_only: bool = False):
        from ..models import spec_of
        from ..runtime import model_device, resolve_device

        self.module = module
        if device is not None:
            module.to(resolve_device(device))
        self.device = model_device(module)
        spec = spec_of(module)
        self.input_shape = tuple(input_shape or (spec["input_shape"] if spec else ())) or None
        self.label_only = bool(label_only)
        floats = [p.dtype for p in module.parameters() if p.is_floating_point()]
        self.dtype = floats[0] if floats else torch.float32  # a float64 (or half) model gets inputs of its dtype

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        was = self.module.training
        self.module.eval()
        try:
            out = output_tensor(self.module(x.to(self.device, dtype=self.dtype))).float().cpu()
        finally:
            self.module.train(was)
        return out.reshape(len(out), -1).argmax(1) if self.label_only and out.dim() > 1 else out


class _OnnxBackend:
    label_only = False

    def __init__(self, path: Path):
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - a declared dependency
            raise SuspectError("ONNX suspects need onnxruntime (pip install onnxruntime)") from None
        if not path.is_file():
            raise SuspectError(f"ONNX file {path} does not exist")
        with open(path, "rb") as f:
            head = f.read(2)
        if len(head) < 2:
            raise SuspectError(f"{path} is empty; expected an ONNX model")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise SuspectError(f"{path} is not a valid ONNX model: {first_line(e)}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise SuspectError(f"{path}: expected an ONNX model with one input, found {len(inputs)}")
        self.input_name = inputs[0].name
        dims = inputs[0].shape[1:]
        self.input_shape = tuple(int(d) for d in dims) if all(isinstance(d, int) for d in dims) else None
        # The output size the graph declares, so that a key's signature is checked before any query (a
        # 5-output model judged with a 10-class key would otherwise be tested against a 1/10 null).
        first = self.session.get_outputs()[0]
        out_dims = first.shape[1:]
        self.output_size: int | None = None
        if out_dims and all(isinstance(d, int) and d > 0 for d in out_dims):
            self.output_size = math.prod(out_dims)
        # An integer output of one value per input is a label, shaped [N] or [N, 1] alike: label-only (an
        # [N, 1] label read as one score per input would be judged as "class 0" for every input).
        if "int" in str(first.type) and (not out_dims or self.output_size == 1):
            self.label_only, self.output_size = True, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy().astype(np.float32)
        try:
            out = self.session.run(None, {self.input_name: arr})[0]
        except Exception as e:
            raise SuspectError(f"ONNX model failed on a batch of shape {tuple(arr.shape)}: "
                               f"{first_line(e)}") from None
        out = np.asarray(out)
        if self.label_only:
            if out.ndim == 0 or out.size != len(arr):
                raise SuspectError(f"ONNX model answered {out.size} labels for {len(arr)} inputs")
            return torch.from_numpy(out.reshape(len(arr)).astype(np.int64))
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


class _Labelled:
    """A callable backend whose answers are said to be labels (or not), every other member passed through."""

    def __init__(self, inner: Any, label_only: bool) -> None:
        self._inner, self.label_only = inner, label_only

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._inner(x)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Suspect:
    """A model under judgement, white-box (`module` set) or black-box (`module` is None)."""

    def __init__(self, source: nn.Module | Backend, *, input_shape: tuple[int, ...] | None = None,
                 batch_size: int = 256, max_queries: int | None = None, device: Any = None,
                 name: str | None = None, reshape: bool = False, label_only: bool | None = None):
        """`label_only=True` makes a module answer its top class only (as a label-only API would); for a
        callable it says that the callable's answers are labels."""
        if label_only is not None and not isinstance(label_only, bool):
            raise SuspectError(f"label_only must be true, false or none, got {label_only!r}")
        if isinstance(source, nn.Module):
            self._backend: Any = _TorchBackend(source, input_shape, device, label_only=bool(label_only))
            self.module: nn.Module | None = source
        elif callable(source):
            self._backend = source
            self.module = None
            if label_only is not None:
                self._backend = _Labelled(source, label_only)
        else:
            raise SuspectError(f"a Suspect wraps an nn.Module, a file or a URL, not {type(source).__name__}")
        self._input_shape = tuple(input_shape) if input_shape is not None else None
        if batch_size < 1:
            raise SuspectError("batch_size must be >= 1")
        self.batch_size = batch_size
        if max_queries is not None:
            max_queries = count("max_queries", max_queries, 0, error=SuspectError)
        self.max_queries = max_queries
        self.reshape = bool(reshape)
        self.queries = 0
        self.name = name or type(source).__name__
        self.source_path: str | None = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def load(cls, source: str | os.PathLike | nn.Module | Suspect, **kw: Any) -> Suspect:
        """From a module, a modelseal `.safetensors` model file, an `.onnx` file or an http(s) URL."""
        if isinstance(source, Suspect):
            return source
        if isinstance(source, nn.Module):
            return cls(source, **kw)
        s = source_text(source)
        kind = source_kind(s)
        if kind == "url":
            try:
                from .remote import RemoteBackend
            except ImportError:
                raise SuspectError("remote suspects need modelseal.suspect.remote, which this install lacks") from None
            return cls(RemoteBackend(s, **{k: kw.pop(k) for k in list(kw) if k in RemoteBackend.OPTIONS}),
                       name=s, **kw)
        from ..safeio import usable_path

        path = usable_path(s, SuspectError, "suspect")
        if not path.exists():
            raise SuspectError(f"suspect {path} does not exist (expected a .safetensors model, an .onnx file "
                               "or an http(s):// URL)")
        if kind == "onnx":
            out = cls(_OnnxBackend(path), name=path.name, **kw)
            out.source_path = str(path)
            return out
        from ..errors import ModelError
        from ..models import load_model

        try:
            module = load_model(path)
        except ModelError as e:
            raise SuspectError(str(e)) from None
        out = cls(module, name=path.name, **kw)
        out.source_path = str(path)
        return out

    # ----------------------------------------------------------------- properties
    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The per-example shape `predict` takes (None: any, or any of the right size with `reshape`)."""
        return None if self.reshape else self._declared_shape()

    def _declared_shape(self) -> tuple[int, ...] | None:
        shape = self._input_shape or _backend_attr(self._backend, "input_shape")
        return tuple(shape) if shape is not None else None

    @property
    def label_only(self) -> bool:
        return bool(_backend_attr(self._backend, "label_only"))

    @property
    def white_box(self) -> bool:
        return self.module is not None

    def require_module(self, method: str) -> nn.Module:
        if self.module is None:
            raise WhiteBoxRequired(f"{method} needs the suspect's weights (white-box), but {self.name} is "
                                   "black-box; give a modelseal model file or a module")
        return self.module

    def require_outputs(self, method: str) -> None:
        if self.label_only:
            raise SuspectError(f"{method} needs the suspect's raw outputs, but {self.name} returns labels only")

    def remaining(self) -> int | None:
        return None if self.max_queries is None else max(0, self.max_queries - self.queries)

    # ----------------------------------------------------------------- queries
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs for a batch `x` (first dimension = examples), on the CPU, float32."""
        if not isinstance(x, torch.Tensor):
            raise SuspectError(f"predict takes a tensor, got {type(x).__name__}")
        x = self._fit_shape(x)
        if self.max_queries is not None and self.queries + len(x) > self.max_queries:
            raise BudgetExceeded(f"query budget of {self.max_queries} would be exceeded "
                                 f"({self.queries} used, {len(x)} more asked); raise the budget (--max-queries)")
        counts = bool(_backend_attr(self._backend, "counts_queries"))
        outs = []
        for i in range(0, len(x), self.batch_size):
            xb = x[i : i + self.batch_size]
            if counts:
                out = self._backend(xb, charge=self._charge)
            else:
                out = self._backend(xb)
                self.queries += len(xb)
            if not isinstance(out, torch.Tensor) or out.shape[:1] != xb.shape[:1]:
                raise SuspectError(f"{self.name} answered {len(xb)} inputs with a malformed output")
            if torch.is_floating_point(out) and not torch.isfinite(out).all():
                raise SuspectError(f"{self.name} returned NaN or infinite outputs")
            outs.append(out)
        if not outs:
            return torch.empty(0)
        return torch.cat(outs)

    def _charge(self, n: int) -> None:
        """Count `n` inputs about to be sent; refuse (BudgetExceeded) rather than go over the budget."""
        if self.max_queries is not None and self.queries + n > self.max_queries:
            raise BudgetExceeded(f"query budget of {self.max_queries} would be exceeded by sending {n} more "
                                 f"inputs ({self.queries} already sent, retries included); raise the budget "
                                 "(--max-queries)")
        self.queries += n

    def _fit_shape(self, x: torch.Tensor) -> torch.Tensor:
        shape = self._declared_shape()
        if shape is None or tuple(x.shape[1:]) == shape:
            return x
        same_size = x[0].numel() == math.prod(shape) if len(x) else True
        if self.reshape and same_size:
            return x.reshape(len(x), *shape)
        hint = ("; the element counts match, so --reshape (reshape=True) would send them as "
                f"{shape}" if same_size else "; is the key for this model?")
        raise SuspectError(f"{self.name} takes inputs of shape {shape}, got {tuple(x.shape[1:])}{hint}")

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """Top-class labels for `x` (works for label-only endpoints too)."""
        out = self.predict(x)
        if self.label_only or out.dim() == 1:
            return out.long().reshape(-1)
        return out.reshape(len(out), -1).argmax(1)

    def output_size(self, probe_shape: tuple[int, ...] | None = None) -> int | None:
        """Outputs per input, from the model's spec or the server's metadata. When unknown and the suspect
        is white-box, `probe_shape` allows one uncharged shape probe on a zero input (it asks the model
        nothing the owner's key holds); a model that refuses that shape raises SuspectError."""
        spec = getattr(self.module, "modelseal_spec", None) if self.module is not None else None
        if spec:
            return int(spec["output_size"])
        size = _backend_attr(self._backend, "output_size")
        if size:
            return int(size)
        if probe_shape is not None and self.module is not None:
            try:
                out = self._backend(torch.zeros(1, *probe_shape))
            except RuntimeError:
                raise SuspectError(f"{self.name} does not accept inputs of shape {tuple(probe_shape)}") from None
            return int(out[0].numel())
        return None

    def identity(self) -> dict[str, Any]:
        """What identifies the model judged, for an evidence file: SHA-256 of the file it was loaded from,
        of a module's tensors, or the URL and the model metadata the server gave."""
        if self.source_path is not None:
            h = hashlib.sha256()
            with open(self.source_path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            return {"kind": "file", "name": Path(self.source_path).name, "sha256": h.hexdigest()}
        if self.module is not None:
            from ..tensorfile import state_sha256

            return {"kind": "module", "name": self.name, "sha256_tensors": state_sha256(self.module.state_dict())}
        meta = _backend_attr(self._backend, "metadata")
        return {"kind": "remote" if source_kind(self.name) == "url" else "callable",
                "name": self.name, "metadata": meta if isinstance(meta, dict) else None}

    def __repr__(self) -> str:
        kind = "white-box" if self.white_box else "black-box"
        return f"Suspect({self.name}, {kind}, queries={self.queries})"


def open_source(source: str | os.PathLike, options: RemoteOptions | None = None, *, device: Any = None,
                arch: str | None = None, signature: dict[str, Any] | None = None) -> Suspect:
    """The Suspect for a source string: a modelseal model file, an `.onnx` file or an `http(s)://` endpoint,
    asked as `options` say (`RemoteOptions`; http-only options on a file are refused). `device` (auto, cpu,
    cuda) places a model file's module. With `arch` ("package.module:factory") the source is a state dict of
    that architecture (`modelseal.models.files.open_model`, shaped by the key `signature`); ONNX files and URLs
    are refused, and `options` are not used."""
    s = source_text(source)
    kind = source_kind(s)
    if arch is not None:
        if kind != "file":
            raise ModelSealError("--arch is for state-dict .safetensors suspects; ONNX files and URLs need none")
        from ..models.files import open_model

        return Suspect(open_model(Path(s), "auto" if device is None else device, arch, signature))
    opts = options or RemoteOptions()
    kw = opts.suspect_kwargs()
    if kind == "url":
        kw.update(opts.backend_kwargs())
    elif opts.http_given():
        raise ModelSealError(f"{', '.join(opts.http_given())} apply to http(s) suspects only; {s} is a file")
    elif kind == "file" and device is not None:
        from ..runtime import resolve_device

        kw["device"] = resolve_device(device)
    return Suspect.load(s, **kw)


def as_reference(x: Any) -> Suspect:
    """A verifier's reference model as a Suspect without a query budget (a Suspect the caller built keeps its
    own)."""
    if isinstance(x, Suspect):
        return x
    s = as_suspect(x)
    s.max_queries = None
    return s


def as_suspect(x: Any) -> Suspect:
    if isinstance(x, Suspect):
        return x
    if isinstance(x, (nn.Module, str, os.PathLike)):
        return Suspect.load(x)
    raise ModelSealError(f"cannot judge a {type(x).__name__}; give a Suspect, an nn.Module, a file or a URL")
