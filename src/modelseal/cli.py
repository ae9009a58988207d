"""The `modelseal` command line: the only place that parses arguments or prints for a person.

Every command takes --json; commands that compute take --device and --seed; long work shows a progress bar
on a terminal; no output file is overwritten without --force (`bench run` resumes by default and starts over
with --restart). Methods and attacks are reached through their registries, and their parameters through
`--set NAME=VALUE` (VALUE is read as JSON when it parses, else a string); `modelseal methods NAME` lists them.
Every `--help` ends with examples. A user's own architecture comes in as `--arch package.module:factory`.

Thin by design: model files are read and written by `modelseal.models.files`, suspects opened from a source
string by `modelseal.suspect.open_source` (with `RemoteOptions`), protected models, keys and commitments
written by `modelseal.api.protect_and_save` / `save_protection`. A ModelSealError from any command is
turned into its one line and exit 2 in one place, the root command group (`_Commands`).

Start-up: this module imports neither torch nor any module that does; every command imports what it needs
when it runs, so `modelseal --help` and `modelseal methods` answer in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import attacks as attack_registry
from . import methods as method_registry
from .errors import ModelSealError
from .safeio import check_distinct


def _examples(*lines: str) -> str:
    """An epilog of example command lines (click keeps a paragraph that starts with \\b as written)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


class _Commands(typer.core.TyperGroup):
    """The root group: a ModelSealError raised by any command ends here, once, in one line and exit 2 (the
    traceback too with --debug), whether the command line runs through `main` or as the typer `app`."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ModelSealError as e:
            _fail(e)


# Plain click help (rich_markup_mode=None): flags show as `--json`, not `--json <bool>`, and examples keep their lines.
_TYPER: dict[str, Any] = {"no_args_is_help": True, "rich_markup_mode": None,
                          "context_settings": {"help_option_names": ["-h", "--help"]}}
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, cls=_Commands, **_TYPER,
                  help="modelseal: watermark, fingerprint, lock and judge neural networks.",
                  epilog=_examples("modelseal train --data digits --arch mlp --epochs 3 --out owner.safetensors",
                                   "modelseal methods trigger-set",
                                   "modelseal demo --out demo-out"))
watermark_app = typer.Typer(**_TYPER, help="Embed watermarks.", epilog=_examples(
    "modelseal watermark embed owner.safetensors --out marked.safetensors --key wm.seal"))
fingerprint_app = typer.Typer(**_TYPER, help="Extract fingerprints (the model is not changed).", epilog=_examples(
    "modelseal fingerprint extract owner.safetensors --method tafa --key fp.seal"))
deepmarks_app = typer.Typer(**_TYPER, help="Per-user fingerprints (DeepMarks).", epilog=_examples(
    "modelseal deepmarks distribute owner.safetensors --users 7 --out-dir copies --key dm.seal"))
app.add_typer(watermark_app, name="watermark")
app.add_typer(fingerprint_app, name="fingerprint")
app.add_typer(deepmarks_app, name="deepmarks")
bench_app = typer.Typer(**_TYPER, help="Robustness benchmark: run scenarios, write reports.", epilog=_examples(
    "modelseal bench run tiny --out run", "modelseal bench report run/results.sqlite --out report.html"))
app.add_typer(bench_app, name="bench")

TABLE_WIDTH = 160  # columns a table is laid out in when printed into a pipe or file


class _PipeConsole(Console):
    """Into a pipe or file: a line of text is never wrapped (rich would cut at 80 columns and split paths), and a
    table is laid out at TABLE_WIDTH columns (unbounded, one row became a line of 1,785 characters)."""

    def print(self, *objects: Any, **kw: Any) -> None:
        if kw.get("width") is None and any(isinstance(o, Table) for o in objects):
            kw["width"], kw["soft_wrap"] = TABLE_WIDTH, False
        super().print(*objects, **kw)


def _console(stderr: bool = False) -> Console:
    """A console that wraps at the terminal's width on a terminal; into a pipe or file see `_PipeConsole`
    (COLUMNS, when set, still wins)."""
    c = Console(stderr=stderr)
    if not c.is_terminal and not os.environ.get("COLUMNS"):
        c = _PipeConsole(stderr=stderr, width=100_000, soft_wrap=True)
    return c


out = _console()
err = _console(stderr=True)

DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="training batch size")]
SeedOpt = Annotated[int, typer.Option("--seed", help="random seed")]
OnlyOpt = Annotated[Optional[str], typer.Option(
    "--only", metavar="METHOD,...", help="run only the protections of these methods (comma-separated)")]


def _only(only: str | None) -> list[str] | None:
    """The method names of an `--only a,b` option (None when not given)."""
    if only is None:
        return None
    names = [n.strip() for n in only.split(",") if n.strip()]
    if not names:
        raise ModelSealError("--only needs at least one method name, e.g. --only trigger-set,tafa")
    return names
TsaCertOpt = Annotated[Optional[list[Path]], typer.Option(
    "--tsa-cert", help="a TSA certificate (PEM/DER) the checker trusts for RFC 3161 tokens; repeatable")]
TimestampOpt = Annotated[Optional[list[Path]], typer.Option(
    "--timestamp", help="RFC 3161 token over the commitment (default: PUBLIC.tsr beside each --commitment)")]
SecretSeedOpt = Annotated[Optional[int], typer.Option(
    "--seed", help="seed of the secret (default: a fresh random seed; the key records it)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON", metavar="")]
ForceOpt = Annotated[bool, typer.Option("--force", help="overwrite existing output files", metavar="")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="method/attack parameter NAME=VALUE, repeatable; `modelseal methods NAME` lists them")]
ArchOpt = Annotated[Optional[str], typer.Option(
    "--arch", help="your own architecture as package.module:factory: modelseal IMPORTS that module (current "
                   "folder first, then PYTHONPATH; its code runs) and calls factory() for the nn.Module; model "
                   "files are then plain safetensors state dicts (.pt2 files are refused: torch unpickles them)")]
DataOpt = Annotated[Optional[str], typer.Option(
    "--data", help="data set: mnist5k, digits, diabetes, sample-images, idx:DIR, cifar10:DIR, cifar100:DIR, "
                   "npz:PATH, csv:PATH, folder:DIR (a folder, .npz or .csv path alone works too; default for a "
                   "command on a model: the data set the model file names, "
                   "else the embedded one its input shape fits)")]


def _check_folder(path: Path, label: str = "") -> None:
    """An output's folder must exist: the command line creates no folder a user did not ask for (a typo such
    as --out /nonexistent-dir/x would otherwise make a folder at the filesystem root)."""
    from .errors import WriteError

    parent = Path(path).parent
    if not parent.is_dir():
        what = f"{label} {path}" if label else str(path)
        raise WriteError(f"cannot write {what}: its folder {parent} does not exist; create it first "
                         f"(mkdir -p {parent}) or give a path in an existing folder")


def check_writable(path: Path, force: bool) -> None:
    from .safeio import check_writable as check

    check(path, force)
    _check_folder(path)


def check_outputs(outputs: list[tuple[str, Any]], force: bool, inputs: dict[str, Any] | None = None,
                  created: tuple[Path, ...] = ()) -> None:
    """tensorfile.check_outputs, and each output's folder exists (or is one of `created`, a folder the
    command makes, such as `deepmarks distribute --out-dir`)."""
    from .safeio import check_outputs as check

    check(outputs, force, inputs=inputs)
    for label, p in outputs:
        if Path(p).parent not in created:
            _check_folder(Path(p), label)


DEBUG_ENV = "MODELSEAL_DEBUG"
_debug = False  # this invocation shows tracebacks
_debug_flag = False  # --debug was given to main(), which removes it from the arguments


def _debug_from_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _show_version(value: bool) -> None:
    if value:
        from ._version import __version__

        out.print(f"modelseal {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(debug: Annotated[bool, typer.Option(
        "--debug", help=f"on an error, also show the Python traceback (or set {DEBUG_ENV}=1)")] = False,
          version: Annotated[bool, typer.Option("--version", help="print the version and exit", is_eager=True,
                                                callback=_show_version)] = False) -> None:
    global _debug
    _debug = _debug_flag or debug or _debug_from_env()


def _one_line(e: BaseException | str) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _error_line(text: str) -> None:
    """The one line every error ends in: on stderr, never wrapped, never read as rich markup."""
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(text)}", soft_wrap=True, highlight=False)


def _fail(e: Exception) -> None:
    if _debug or _debug_from_env():
        traceback.print_exception(e)
    _error_line(_one_line(e))
    raise typer.Exit(2)


def _params(items: list[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ModelSealError(f"--set expects NAME=VALUE, got {item!r}")
        try:
            params[name.strip().replace("-", "_")] = json.loads(value)
        except ValueError:
            params[name.strip().replace("-", "_")] = value
    return params


SEEDED_WARNING = ("--seed makes this secret reproducible: anyone who knows the seed can re-make the key (and its "
                  "nonces); leave --seed out for a real key")


def _secret_seed(seed: int | None) -> int:
    """Keys are secrets derived from their seed: without --seed, draw a fresh one from the OS (`secrets`); with
    it, say in one line that the key is only as secret as the seed."""
    if seed is not None:
        err.print(f"[yellow]warning:[/] {SEEDED_WARNING}", soft_wrap=True, highlight=False)
        return seed
    import secrets

    return secrets.randbits(62)


def _construct(cls: Any, params: dict[str, Any]) -> Any:
    from .schema import fields_of

    known = [s.name for s in fields_of(cls)]
    unknown = [n for n in params if n not in known]
    if unknown:
        raise ModelSealError(f"bad parameter for {cls.name}: no parameter {', '.join(map(repr, unknown))}; its "
                             "parameters: "
                             f"{', '.join(known)} (see `modelseal methods {cls.name}`)")
    try:
        return cls(**params)
    except TypeError as e:
        raise ModelSealError(f"bad parameter for {cls.name}: {e} (see `modelseal methods {cls.name}`)") from None


def _progress(as_json: bool):
    from .runtime import make_progress

    return make_progress(False if as_json else None)


# input shapes of the embedded data sets, known without loading them (or importing torch)
_EMBEDDED_SHAPES = {"mnist5k": (1, 28, 28), "digits": (1, 8, 8), "diabetes": (10,), "sample-images": (3, 32, 32)}


def _shape_text(shape: Any) -> str:
    return "x".join(str(s) for s in shape)


def _starts_pickled(path: Path) -> bool:
    from .tensorfile import pickled

    try:
        with open(path, "rb") as f:
            return pickled(f.read(9))
    except OSError:
        return False


def _header_spec(path: Path) -> dict[str, Any]:
    """What a model file's header records, read without torch and without trusting the file: `input_shape`
    and the `data` set it was trained on (when recorded); {} when the header does not say (loading the file
    later says what is wrong with it)."""
    from .safeio import loads_json
    from .tensorfile import MODEL_META, USER_ARCH_META, pickle_hint, read_head, read_header_metadata

    if _starts_pickled(path):  # a torch.save file: say so and how to convert it, not "pass --data"
        raise ModelSealError(pickle_hint(str(path)))
    try:
        meta = read_header_metadata(read_head(path, ModelSealError, "model file"), str(path), ModelSealError)
        if MODEL_META in meta:
            info = loads_json(meta[MODEL_META], str(path), ModelSealError)
            spec, extra = info.get("spec", {}), info.get("extra", {})
        else:
            spec = loads_json(meta.get(USER_ARCH_META, "{}"), str(path), ModelSealError)
            extra = {}
        shape, data = spec.get("input_shape"), extra.get("data") if isinstance(extra, dict) else None
    except (ModelSealError, AttributeError, TypeError):
        return {}
    found: dict[str, Any] = {}
    if isinstance(shape, list) and shape and all(isinstance(s, int) for s in shape):
        found["input_shape"] = tuple(shape)
    if isinstance(data, str) and data:
        found["data"] = data
    return found


def _data_for(model_path: Path | None, data: str | None, flag: str = "--data") -> str:
    """The data set a command on MODEL uses, decided before any work (and before torch is imported):
    `--data` when given; else the data set the model file's header names (`modelseal train` records it);
    else the embedded data set whose input shape the header records (1x8x8 digits, 1x28x28 mnist5k, ...).
    A `--data` whose input shape disagrees with the model's is refused here for the embedded sets, and for
    every set once loaded (`check_data_fits`)."""
    head = _header_spec(model_path) if model_path is not None and Path(model_path).is_file() else {}
    shape = head.get("input_shape")
    if data is None and model_path is not None and not Path(model_path).is_file():
        what = "is a directory, not a model file" if Path(model_path).is_dir() else "does not exist"
        raise ModelSealError(f"model file {model_path} {what}")
    if data is None:
        if head.get("data"):
            return head["data"]
        fits = [name for name, s in _EMBEDDED_SHAPES.items() if s == shape]
        if len(fits) == 1:
            return fits[0]
        what = f"its input shape {_shape_text(shape)} fits no embedded data set" if shape else \
            "its header records no input shape"
        raise ModelSealError(f"{model_path} does not name its data set and {what}; pass {flag} NAME "
                             "(mnist5k, digits, diabetes, sample-images, idx:DIR, npz:PATH, csv:PATH, ...)")
    want = _EMBEDDED_SHAPES.get(data)
    if shape is not None and want is not None and tuple(want) != tuple(shape):
        raise ModelSealError(_misfit_text(model_path, shape, data, want, flag))
    return data


def _misfit_text(model_path: Any, shape: Any, data: str, want: Any, flag: str = "--data") -> str:
    fits = [name for name, s in _EMBEDDED_SHAPES.items() if tuple(s) == tuple(shape)]
    hint = f"pass {flag} {fits[0]}, or leave {flag} out" if fits else f"pass a {flag} whose inputs are " \
        f"{_shape_text(shape)}"
    return (f"{model_path} takes inputs of shape {_shape_text(shape)}, but {flag} {data} has inputs of shape "
            f"{_shape_text(want)}; {hint}")


def check_data_fits(model: Any, meta: Any, data: str, model_path: Any = "the model", flag: str = "--data") -> None:
    """The one shape check of every command that feeds data to a model: the model's recorded input shape
    (its spec) must be the data set's, else one line naming both shapes and the --data that fits."""
    spec = getattr(model, "modelseal_spec", None) or {}
    shape, want = spec.get("input_shape"), getattr(meta, "input_shape", None)
    if shape is not None and want is not None and tuple(shape) != tuple(want):
        raise ModelSealError(_misfit_text(model_path, shape, data, want, flag))


def _open_model(path: Path, device: str, arch: str | None = None, spec: Any = None):
    """A model file (`models.files.open_model`: modelseal's own, or with `arch` a user's state dict, whose input
    shape `spec` gives when the file lacks it); a data set's Meta as `spec` must fit the model
    (`check_data_fits`)."""
    from .models.files import open_model

    model = open_model(path, device, arch, spec)
    if arch is None and spec is not None and not isinstance(spec, dict):
        check_data_fits(model, spec, getattr(spec, "name", "data"), path)
    return model


def _protect_file(method: Any, model_path: Path, data: str, device: str, out_path: Path, key_path: Path,
                  force: bool, as_json: bool, arch: str | None = None, again: Any = None):
    """`watermark embed` and `lock` (which check their outputs first, `_check_pair`): load --data and MODEL,
    then `api.protect_and_save` writes the protected model, the key and its commitment (all or none). A
    protection that missed its own goal (the method warns `WeakProtection`: a lock that still works) is refused
    with the method's numbers, before anything is written."""
    import warnings

    from . import data as data_mod
    from .api import protect_and_save
    from .errors import WeakProtection

    splits = data_mod.load(data, seed=0)
    model = _open_model(model_path, device, arch, splits.meta)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeakProtection)
        return protect_and_save(method, model, splits, out_path, key_path, arch=arch, force=force, again=again,
                                progress=_progress(as_json), inputs=_inputs(model_path, data))


def _inputs(model_path: Path | None, data: str | None = None) -> dict[str, Path | None]:
    """The files a command reads, which no output may overwrite: the model and a data file."""
    kind, _, arg = (data or "").partition(":")
    return {"MODEL": model_path, f"--data {kind}:": Path(arg) if arg else None}


def _check_pair(model_path: Path | None, data: str | None, out_path: Path | None, key_path: Path,
                force: bool) -> None:
    """Before any work: the input model, --out, --key and the key's commitment are different files, and
    each output can be written (no existing file without --force, no directory, no parent that is a file)."""
    from .safeio import commitment_path

    outs = [("--out", out_path)] if out_path is not None else []
    check_outputs([*outs, ("--key", key_path), ("commitment", commitment_path(key_path))], force,
                  inputs=_inputs(model_path, data))


def _before_protect(model_path: Path, data: str | None, out_path: Path, key_path: Path, force: bool,
                    seed: int | None) -> tuple[int, str]:
    """The start of `watermark embed` and `lock`, before torch: the key's seed (fresh unless given), the data
    set the model takes, and outputs that can be written."""
    data = _data_for(model_path, data)
    _check_pair(model_path, data, out_path, key_path, force)
    return _secret_seed(seed), data


def _emit(as_json: bool, payload: dict[str, Any], human) -> None:
    if as_json:
        from .verdict import jsonable

        sys.stdout.write(json.dumps(jsonable(payload), indent=2) + "\n")
    else:
        human()


def _split(splits, name: str):
    if name not in ("owner", "attacker", "test"):
        raise ModelSealError(f"--split must be owner, attacker or test, not {name!r}")
    return getattr(splits, name)


# --------------------------------------------------------------------------------------------- train
@app.command(epilog=_examples(
    "modelseal train --data mnist5k --arch cnn --epochs 5 --out owner.safetensors",
    "modelseal train --data digits --arch mymodels:make_net --out mine.safetensors   # your own nn.Module"))
def train(
    out_path: Annotated[Path, typer.Option("--out", help="model file to write (.safetensors)")],
    data: DataOpt = "mnist5k",
    arch: Annotated[str, typer.Option("--arch", help="mlp | cnn | resnet18 | wrn | vae-decoder, or your own "
                                                     "package.module:factory (imported; see `modelseal verify "
                                                     "--help`)")] = "cnn",
    epochs: Annotated[int, typer.Option(help="training epochs")] = 5,
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-3,
    split: Annotated[str, typer.Option(help="which split to train on: owner | attacker")] = "owner",
    device: DeviceOpt = "auto", batch_size: BatchOpt = 64,
    seed: Annotated[Optional[int], typer.Option(
        "--seed", help="seed of the initial weights and batch order (default: a fresh random seed, recorded in "
                       "the model file; with --seed the data split uses it too, else split seed 0)")] = None,
    as_json: JsonOpt = False, force: ForceOpt = False,
) -> None:
    """Train a model from the zoo on a data split and save it."""
    import secrets

    # a fresh initialisation by default: models that share an initialisation share boundary structure that
    # fingerprints (TAFA) detect as lineage, so two users must not get the same init by not choosing one
    split_seed, seed_source = (seed, "--seed") if seed is not None else (0, "fresh")
    if seed is None:
        seed = secrets.randbelow(2 ** 31)
    check_writable(out_path, force)
    from . import data as data_mod
    from . import train as train_mod
    from .models import files

    splits = data_mod.load(data or "mnist5k", seed=split_seed)
    model = files.build_model(arch, splits.meta, seed=seed, device=device)
    t0 = time.perf_counter()
    hist = train_mod.fit(model, _split(splits, split), epochs=epochs, lr=lr, seed=seed, batch_size=batch_size,
                         progress=_progress(as_json), description=f"train {arch}")
    seconds = time.perf_counter() - t0
    acc = train_mod.evaluate(model, splits.test)
    # the header names an embedded data set, so later commands need no --data (never a user's file path:
    # model files are shared, and a path says where the owner keeps its data)
    files.write_model(model, out_path, force, arch if files.is_user_arch(arch) else None,
                      data if data in _EMBEDDED_SHAPES else None,
                      extra={"seed": seed, "seed_source": seed_source, "split_seed": split_seed})
    metric = "accuracy" if splits.meta.task == "classification" else "r2"
    payload = {"model": str(out_path), "arch": arch, "data": data, "epochs": hist["epochs"], "seed": seed,
               f"test_{metric}": acc, "seconds": seconds}
    _emit(as_json, payload, lambda: out.print(
        f"trained {arch} on {data} ({hist['epochs']} epochs, {seconds:.1f} s): test {metric} {acc:.4f} -> {out_path}"))


# -------------------------------------------------------------------------------------------- attack
QUERY_FAMILIES = ("input", "output", "rejection")


def _query_side(name: str, family: str) -> ModelSealError:
    """The refusal for an attack that changes what a served model answers, not a model file."""
    return ModelSealError(
        f"{name} is a query-side attack ({family} family): it changes what a served model answers, not its "
        f"weights, so there is no attacked model file to write; it applies in `modelseal bench` scenarios "
        f"([[attacks]] name = \"{name}\") and from Python: ms.attacks.get(\"{name}\")(...).wrap(ms.Suspect(model), "
        "data.meta) gives the suspect a verifier would face")


def _save_attacked(model, path: Path, force: bool, arch: str | None) -> None:
    """Save the attacked model and read it back: a model whose layers changed size (structured pruning) must
    load again, or the file is removed and the error says why."""
    from .errors import ModelError
    from .models import load_model
    from .models.files import write_model

    write_model(model, path, force, arch)
    if arch is not None:
        return
    try:
        load_model(path)
    except ModelError as e:
        path.unlink(missing_ok=True)
        raise ModelSealError(f"the attacked model has another architecture than its zoo header says (its layers "
                             f"changed size, e.g. by structured pruning), and this model file format cannot record "
                             f"that yet, so nothing was written ({e}); use the attack from Python or in "
                             "`modelseal bench`") from None


@app.command(epilog=_examples(
    "modelseal attack finetune owner.safetensors --data digits --set mode=ftal --set epochs=2 "
    "--out pirated.safetensors",
    "modelseal attack prune owner.safetensors --data digits --set amount=0.5 --out pruned.safetensors",
    "modelseal attack collude copies/user-001.safetensors --other copies/user-002.safetensors --data digits "
    "--set k=2 --out leaked.safetensors",
    "modelseal attack knockoff model.onnx --data digits --set queries=500 --out stolen.safetensors",
    "modelseal attack --list"))
def attack(
    name: Annotated[str, typer.Argument(metavar="NAME", help="attack name (see --list)")] = "",
    model_path: Annotated[Optional[Path], typer.Argument(metavar="MODEL",
        help="model file to attack (extraction attacks also take an .onnx file or an http(s) URL)")] = None,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="attacked model file to write")] = None,
    data: DataOpt = None,
    split: Annotated[str, typer.Option(help="data the attacker holds: attacker | owner | test")] = "attacker",
    other: Annotated[Optional[list[Path]], typer.Option(
        "--other", help="other copies (average: the models to average with; collude: the other colluders)")] = None,
    set_: SetOpt = None, list_: Annotated[bool, typer.Option("--list", help="list attacks by family",
                                                             metavar="")] = False,
    arch: ArchOpt = None,
    device: DeviceOpt = "auto", seed: SeedOpt = 0, as_json: JsonOpt = False, force: ForceOpt = False,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", help="training batch size of an attack that trains (default: the attack's)")] = None,
) -> None:
    """Apply a removal attack to a model file and write the attacked model (model modification and extraction
    attacks; query-side attacks apply in `modelseal bench`)."""
    if list_ or not name:
        groups = attack_registry.by_family()
        _emit(as_json, {"attacks": attack_registry.names(), "families": groups},
              lambda: out.print("\n".join(f"{fam}: {', '.join(ns)}" for fam, ns in groups.items()),
                                soft_wrap=True, highlight=False))
        return
    family = attack_registry.FAMILIES.get(name)
    if family in QUERY_FAMILIES:
        raise _query_side(name, family)
    if model_path is None or out_path is None:
        raise ModelSealError("attack needs a MODEL file and --out PATH")
    from .sources import source_kind

    kind = source_kind(model_path)
    remote = kind == "url"
    check_writable(out_path, force)
    check_distinct([*([] if remote else [("MODEL", model_path)]), ("--out", out_path),
                    *(("--other", o) for o in other or [])])
    import dataclasses

    from . import data as data_mod
    from . import train as train_mod

    cls = attack_registry.get(name)
    params = {"seed": seed, **_params(set_)}
    fields: set[str] = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    if batch_size is not None:
        if "batch_size" not in fields:
            raise ModelSealError(f"{name} does not train; --batch-size applies to attacks that train")
        params["batch_size"] = batch_size
    data = _data_for(model_path, data)
    splits = data_mod.load(data, seed=0)
    others = [_open_model(p, device, arch, splits.meta) for p in other or []]
    if others and "others" in fields:
        params["others"] = others
    atk = _construct(cls, params)
    if atk.acts_on == "queries":
        raise _query_side(name, atk.family)
    if atk.copies > 1 and len(others) + 1 != atk.copies:
        fewer = f" (or --set k={len(others) + 1})" if len(others) >= 1 else ""
        raise ModelSealError(f"{name} combines {atk.copies} copies: give MODEL and {atk.copies - 1} --other "
                             f"cop{'y' if atk.copies == 2 else 'ies'}{fewer}")
    if others and atk.copies == 1 and "others" not in fields:
        raise ModelSealError(f"{name} attacks one model; --other is for average and collude")
    black_box = kind != "file"
    if black_box and not atk.takes_suspect:
        raise ModelSealError(f"{name} changes weights and needs a model file; an .onnx file or a URL can only "
                             "be attacked by extraction (knockoff, knockoff-adaptive, retrain-xarch)")
    if black_box:
        from .suspect import open_source

        model: Any = open_source(model_path)
        before = float((model.labels(splits.test.x) == splits.test.y).float().mean())
    else:
        model = _open_model(model_path, device, arch, splits.meta)
        before = train_mod.evaluate(model, splits.test)
    atk.progress = _progress(as_json)
    attacked = atk.apply_many([model, *others], _split(splits, split)) if atk.copies > 1 else \
        atk.apply(model, _split(splits, split))
    seconds = float(atk.cost.get("wall_s", 0.0))
    after = train_mod.evaluate(attacked, splits.test)
    _save_attacked(attacked, out_path, force, arch)
    payload = {"attack": name, "family": atk.family, "params": {k: v for k, v in params.items() if k != "others"},
               "test_metric_before": before, "test_metric_after": after, "seconds": seconds,
               "cost": atk.cost, "out": str(out_path)}
    spent = f", {atk.cost.get('queries', 0)} queries" if atk.cost.get("queries") else ""
    _emit(as_json, payload, lambda: out.print(
        f"{name}: test metric {before:.4f} -> {after:.4f} ({seconds:.1f} s{spent}) -> {out_path}"))


# -------------------------------------------------------------------------------- watermark / fingerprint
@watermark_app.command("embed", epilog=_examples(
    "modelseal watermark embed owner.safetensors --out marked.safetensors --key wm.seal",
    "modelseal watermark embed owner.safetensors --set n=50 --out marked.safetensors --key wm.seal --force",
    "modelseal watermark embed mine.safetensors --arch mymodels:make_net --data digits --out m.safetensors "
    "--key wm.seal"))
def watermark_embed(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="owner model file")],
    out_path: Annotated[Path, typer.Option("--out", help="watermarked model file to write")],
    key_path: Annotated[Path, typer.Option("--key", help="secret key file to write (.seal)")],
    method: Annotated[str, typer.Option(help="watermark method")] = method_registry.default("watermark"),
    data: DataOpt = None, set_: SetOpt = None, arch: ArchOpt = None,
    device: DeviceOpt = "auto", seed: SecretSeedOpt = None, as_json: JsonOpt = False, force: ForceOpt = False,
) -> None:
    """Embed a watermark: writes the marked model and the secret key."""

    seed, data = _before_protect(model_path, data, out_path, key_path, force, seed)
    mi = method_registry.require_family(method, "watermark", "modelseal watermark embed")
    wm = _construct(mi.cls, {"seed": seed, **_params(set_)})
    before, after, key = _protect_file(wm, model_path, data, device, out_path, key_path, force, as_json,
                                       arch)
    payload = {"method": method, "test_metric_before": before, "test_metric_after": after,
               "model": str(out_path), "key": str(key_path), "digest": key.digest()}
    _emit(as_json, payload, lambda: out.print(
        f"{method}: test metric {before:.4f} -> {after:.4f}; model -> {out_path}, key -> {key_path} "
        f"(sha256 {key.digest()[:16]}...)"))


@fingerprint_app.command("extract", epilog=_examples(
    "modelseal fingerprint extract owner.safetensors --method tafa --key fp.seal",
    "modelseal fingerprint extract owner.safetensors --method c-examples --variant rc --key ce.seal",
    "modelseal verify ce.seal marked.safetensors --reference ref.safetensors   # c-examples judges with references"))
def fingerprint_extract(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="owner model file")],
    key_path: Annotated[Path, typer.Option("--key", help="fingerprint key file to write (.seal)")],
    method: Annotated[str, typer.Option(help="tafa | c-examples, or a peer baseline: akh | ipguard | modeldiff | "
                                              "sac")] = method_registry.default("fingerprint"),
    variant: Annotated[Optional[str], typer.Option(help="c-examples variant: c | rc | ltrc")] = None,
    set_: SetOpt = None, arch: ArchOpt = None,
    data: Annotated[Optional[str], typer.Option(
        "--data", help="with --arch, a data set whose input shape and bounds the model takes (no data is used)")]
        = None,
    device: DeviceOpt = "auto", seed: SecretSeedOpt = None, as_json: JsonOpt = False, force: ForceOpt = False,
) -> None:
    """Extract a fingerprint from a model without changing it. TAFA needs no data; c-examples and the peer
    baselines that start from the owner's inputs read the data set the model file names (or `--set data=NAME`)."""
    seed = _secret_seed(seed)
    _check_pair(model_path, None, None, key_path, force)
    from .data import InputSpec

    mi = method_registry.require_family(method, "fingerprint", "modelseal fingerprint extract")
    params = {"seed": seed, **_params(set_)}
    if variant is not None:
        params["variant"] = variant
    fp = _construct(mi.cls, params)
    meta = None
    if arch is not None and data is not None:
        from . import data as data_mod

        meta = data_mod.load(data, seed=0).meta
    model = _open_model(model_path, device, arch, meta)
    spec = model.modelseal_spec
    bounds = tuple(spec.get("bounds", (0.0, 1.0)))
    t0 = time.perf_counter()
    done = method_registry.protect(fp, model, input_spec=InputSpec(tuple(spec["input_shape"]), bounds),
                                   progress=_progress(as_json))
    key = done.key
    seconds = time.perf_counter() - t0
    from .api import save_protection

    save_protection(done, key_path, force=force, inputs=_inputs(model_path))
    payload = {"method": method, "key": str(key_path), "digest": key.digest(), "seconds": seconds,
               "params": key.params}
    _emit(as_json, payload, lambda: out.print(
        f"{method}: fingerprint extracted in {seconds:.1f} s -> {key_path} (sha256 {key.digest()[:16]}...)"))


# ------------------------------------------------------------------------------------------ deepmarks
@deepmarks_app.command("distribute", epilog=_examples(
    "modelseal deepmarks distribute owner.safetensors --users 7 --out-dir copies --key dm.seal"))
def deepmarks_distribute(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="owner model file")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="folder for one model file per user")],
    key_path: Annotated[Path, typer.Option("--key", help="secret key file to write")],
    users: Annotated[Optional[int], typer.Option(help="number of users (copies); default: the method's")] = None,
    method: Annotated[str, typer.Option(help="per-user method")] = method_registry.default("per-user"),
    data: DataOpt = None, set_: SetOpt = None, arch: ArchOpt = None,
    device: DeviceOpt = "auto", seed: SecretSeedOpt = None, as_json: JsonOpt = False, force: ForceOpt = False,
) -> None:
    """Make one fingerprinted copy per user (DeepMarks); writes the copies, a manifest and the key."""
    seed = _secret_seed(seed)
    from .safeio import commitment_path, usable_path

    if usable_path(out_dir, what="--out-dir").exists() and not out_dir.is_dir():
        raise ModelSealError(f"--out-dir {out_dir} is a file, not a folder; give a folder for the copies")
    _check_folder(out_dir, "--out-dir")
    data = _data_for(model_path, data)
    manifest_path = out_dir / "manifest.json"
    # the copies' names depend on the number of users, known once distributed: check the fixed outputs
    # now and every output again (distinct, writable) before anything is written
    check_outputs([("--key", key_path), ("commitment", commitment_path(key_path)), ("manifest", manifest_path)],
                  force, inputs=_inputs(model_path, data), created=(out_dir,))
    from . import data as data_mod
    from . import train as train_mod
    from .api import save_protection
    from .models.files import model_bytes

    mi = method_registry.require_family(method, "per-user", "modelseal deepmarks distribute")
    dm = _construct(mi.cls, {"seed": seed, **({} if users is None else {"users": users}), **_params(set_)})
    splits = data_mod.load(data, seed=0)
    model = _open_model(model_path, device, arch, splits.meta)
    done = method_registry.protect(dm, model, splits.owner, progress=_progress(as_json))
    copies, key = done.models, done.key
    rows: list[dict[str, Any]] = []
    files: list[tuple[Path, bytes | str, str]] = []
    for j, m in enumerate(copies):
        p = out_dir / f"user-{j:03d}.safetensors"
        files.append((p, model_bytes(m, arch), f"copy {p.name}"))
        rows.append({"user": j, "file": p.name, "test_metric": train_mod.evaluate(m, splits.test)})
    metrics = [float(r["test_metric"]) for r in rows]
    manifest = {"method": method, "key_digest": key.digest(), "users": rows}
    files.append((manifest_path, json.dumps(manifest, indent=2) + "\n", "manifest"))
    save_protection(done, key_path, files=files, force=force, inputs=_inputs(model_path, data))
    _emit(as_json, manifest, lambda: out.print(
        f"{method}: {len(rows)} copies -> {out_dir} (test metric {min(metrics):.4f}..{max(metrics):.4f}); "
        f"key -> {key_path}"))


# ------------------------------------------------------------------------------------ any family: protect
@app.command(epilog=_examples(
    "modelseal protect owner.safetensors --method tafa --key owner-tafa.seal",
    "modelseal protect owner.safetensors --method deepmarks --set users=7 --out copies --key dm.seal"))
def protect(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="owner model file")],
    method: Annotated[str, typer.Option(help="any registered method (`modelseal methods` lists them)")],
    key_path: Annotated[Path, typer.Option("--key", help="secret key file to write (.seal)")],
    out_path: Annotated[Optional[Path], typer.Option(
        "--out", help="the protected model file (watermark, lock) or the folder for the users' copies "
                      "(per-user); a fingerprint changes no model and takes none")] = None,
    data: DataOpt = None, set_: SetOpt = None, arch: ArchOpt = None,
    device: DeviceOpt = "auto", seed: SecretSeedOpt = None, as_json: JsonOpt = False, force: ForceOpt = False,
) -> None:
    """Protect a model with any method: its family decides what is written (`watermark embed`, `fingerprint
    extract`, `deepmarks distribute` and `lock` are this command for one family)."""
    mi = method_registry.info(method)
    if mi.family == "fingerprint":
        if out_path is not None:
            raise ModelSealError(f"'{method}' is a fingerprint: the model is not changed, so there is no --out "
                                 "to write; drop --out")
        fingerprint_extract(model_path, key_path, method, None, set_, arch, data, device, seed, as_json, force)
        return
    if out_path is None:
        what = "a folder for the users' copies" if mi.family == "per-user" else "the protected model file"
        raise ModelSealError(f"'{method}' ({mi.family}) writes {what}: give it with --out")
    if mi.family == "watermark":
        watermark_embed(model_path, out_path, key_path, method, data, set_, arch, device, seed, as_json, force)
    elif mi.family == "per-user":
        deepmarks_distribute(model_path, out_path, key_path, None, method, data, set_, arch, device, seed, as_json,
                             force)
    else:
        lock(model_path, out_path, key_path, method, data, set_, arch, device, seed, as_json, force)


# --------------------------------------------------------------------------- suspects (trace, verify)
MaxQueriesOpt = Annotated[Optional[int], typer.Option("--max-queries", help="query budget: most inputs sent")]
TokenEnvOpt = Annotated[str, typer.Option("--token-env", help="http: env var holding the bearer token")]
TimeoutOpt = Annotated[Optional[float], typer.Option(
    "--timeout", help="http: seconds per call, retries and waits included (default 30)")]
RetriesOpt = Annotated[Optional[int], typer.Option(
    "--retries", help="http: retries on 429, 5xx, dropped connections (default 3)")]
RateLimitOpt = Annotated[Optional[float], typer.Option("--rate-limit", help="http: most requests per second")]
InputNameOpt = Annotated[Optional[str], typer.Option(
    "--input-name", help="http: input to send to (default: the model's only input)")]
OutputNameOpt = Annotated[Optional[str], typer.Option(
    "--output-name", help="http: output to read (default: first float output)")]
LabelOnlyOpt = Annotated[bool, typer.Option("--label-only", help="http: read the output as labels")]
MaxBatchOpt = Annotated[Optional[int], typer.Option("--max-batch", help="http: most inputs per request")]
ReshapeOpt = Annotated[bool, typer.Option(
    "--reshape", help="send inputs in the model's declared shape when the sizes match")]


def _is_key_file(path: Path) -> bool | None:
    """True for a modelseal key, False for a model file, None when the header says neither (read without
    torch: the key's metadata entry is 'modelseal', a model's 'modelseal_model' or 'modelseal_user_arch')."""
    from .tensorfile import KEY_META, MODEL_META, USER_ARCH_META, read_head, read_header_metadata

    try:
        meta = read_header_metadata(read_head(path, ModelSealError), str(path), ModelSealError)
    except ModelSealError:
        return None
    if KEY_META in meta:
        return True
    return False if {MODEL_META, USER_ARCH_META} & set(meta) else None


def _check_inputs_exist(keys: dict[str, Path], suspect: str) -> None:
    """Before torch is imported: every key file and a suspect file exist, and they are not swapped (a model
    given as the key, or a key as the suspect); URLs are checked when they are queried."""
    from .safeio import _regular_input, usable_path
    from .sources import source_kind

    for label, k in keys.items():
        _regular_input(usable_path(k, what=label), ModelSealError, label)  # exists, a regular file, a usable name
        if _is_key_file(Path(k)) is False:
            raise ModelSealError(f"{label} {k} is a model file, not a modelseal key; the order is "
                                 "KEY [KEY ...] SUSPECT (the suspect model last)")
    if source_kind(suspect) == "url":
        return
    if not usable_path(suspect, what="SUSPECT").exists():
        raise ModelSealError(f"SUSPECT {suspect} does not exist")
    if Path(suspect).is_file() and _is_key_file(Path(suspect)):
        raise ModelSealError(f"SUSPECT {suspect} is a modelseal key, not a model (a file without modelseal "
                             "architecture metadata); the order is KEY [KEY ...] SUSPECT (the suspect model last)")


def _shape_hint(suspect: Any, key_paths: list[Path]) -> str:
    """When a key's input shape differs from a suspect's of the same size, say that --reshape exists."""
    import math

    from .keys import Key

    have = suspect.input_shape if suspect is not None else None
    for path in key_paths if have else []:
        try:
            want = Key.load(path).signature.get("input_shape")
        except ModelSealError:
            continue
        if want and have is not None and tuple(want) != tuple(have) and math.prod(want) == math.prod(have):
            return f"; the sizes match, so --reshape would send the key's inputs as {tuple(have)}"
    return ""


@app.command(epilog=_examples("modelseal trace dm.seal copies/user-003.safetensors",
                              "modelseal trace dm.seal leaked.safetensors --json"))
def trace(
    key_path: Annotated[Path, typer.Argument(metavar="KEY", help="deepmarks key")],
    suspect: Annotated[str, typer.Argument(metavar="SUSPECT",
        help="suspect model file (.safetensors): DeepMarks reads the weights, so no URL or .onnx file")],
    alpha: Annotated[Optional[float], typer.Option(
        help="false-accusation rate the verifier accepts (default 1e-6); never read from the key")] = None,
    evidence: Annotated[Optional[Path], typer.Option(help="evidence file to write for `modelseal check`")] = None,
    arch: ArchOpt = None,
    device: DeviceOpt = "auto", as_json: JsonOpt = False, force: ForceOpt = False,
) -> None:
    """Name the users whose copies a suspect model was made from (white-box: reads the suspect's weights)."""
    kw: dict[str, Any] = {} if alpha is None else {"alpha": alpha}
    from .sources import source_kind

    if source_kind(suspect) != "file":
        raise ModelSealError(f"trace reads the suspect's weights (DeepMarks is white-box), so {suspect} cannot "
                             "be traced; give its .safetensors model file")
    if evidence is not None:
        check_outputs([("--evidence", evidence)], force, inputs={"KEY": key_path, "SUSPECT": Path(suspect)})
    _check_inputs_exist({"KEY": key_path}, suspect)
    from .api import trace as trace_fn
    from .suspect import open_source

    key: Any = key_path
    if arch is not None:
        from .keys import Key

        key = Key.load(key_path)  # loaded once: its signature shapes the suspect, then it judges
    s = open_source(suspect, device=device, arch=arch, signature=key.signature if arch is not None else None)
    result = trace_fn(s, key, evidence=evidence, force=force, **kw)
    _emit(as_json, result.to_dict(), lambda: out.print(_verdict_text(result)))


# -------------------------------------------------------------------------------------- verify/commit
def _verifier_kw(alpha: float | None, max_queries: int | None, set_: list[str] | None,
                 reference: list[Path] | None, device: str, arch: str | None = None,
                 signature: dict | None = None) -> dict[str, Any]:
    kw: dict[str, Any] = _params(set_)
    if alpha is not None:
        kw["alpha"] = alpha
    if max_queries is not None:
        kw["max_queries"] = max_queries
    given = kw.pop("references", None)
    if given is not None:  # `--set references=...` names model files, like --reference
        files = [given] if isinstance(given, str) else given
        if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
            raise ModelSealError(f"--set references takes model file paths (a path, or a JSON list of paths), "
                                 f"not {json.dumps(given)[:60]}; or pass --reference PATH, once per model")
        reference = [*(reference or []), *map(Path, files)]
    if reference:
        kw["references"] = [_open_model(p, device, arch, signature) for p in reference]
    return kw


@app.command(epilog=_examples(
    "modelseal verify wm.seal suspect.onnx --commitment wm.public.json",
    "modelseal verify wm.seal marked.safetensors --alpha 1e-9 --json --evidence ev.json",
    "modelseal verify wm.seal fp.seal suspect.safetensors   # two keys: one fused (Holm) verdict",
    "modelseal verify fp.seal http://127.0.0.1:8080/v2/models/model --max-queries 2000",
    "modelseal verify wm.seal theirs.safetensors --arch mymodels:make_net   # a state dict of your own nn.Module"))
def verify(
    paths: Annotated[list[str], typer.Argument(metavar="KEY [KEY ...] SUSPECT",
        help="KEY [KEY ...] SUSPECT: secret key(s) (.seal), then the suspect (model file, .onnx file, or "
             "http(s):// endpoint); several keys give one fused verdict (Holm-Bonferroni)")],
    commitment: Annotated[Optional[list[Path]], typer.Option(
        help="public commitment the key must open (one per key, in order)")] = None,
    alpha: Annotated[Optional[float], typer.Option(
        help="false-accusation rate the verifier accepts (default 1e-6); never read from the key")] = None,
    reference: Annotated[Optional[list[Path]], typer.Option(
        "--reference", help="independent reference model that estimates the null (c-examples; repeat)")] = None,
    references: Annotated[Optional[Path], typer.Option(
        "--references", help="reference pool folder (`modelseal references make`), added to any --reference")]
        = None,
    evidence: Annotated[Optional[list[Path]], typer.Option(
        help="evidence file to write (one per key): the transcript `modelseal check` re-checks")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="verifier test parameter NAME=VALUE (see `modelseal methods`)")] = None,
    max_queries: MaxQueriesOpt = None, token_env: TokenEnvOpt = "MODELSEAL_TOKEN", timeout: TimeoutOpt = None,
    retries: RetriesOpt = None, rate_limit: RateLimitOpt = None, input_name: InputNameOpt = None,
    output_name: OutputNameOpt = None,
    label_only: LabelOnlyOpt = False, max_batch: MaxBatchOpt = None, reshape: ReshapeOpt = False,
    arch: ArchOpt = None, tsa_cert: TsaCertOpt = None, timestamp: TimestampOpt = None,
    device: DeviceOpt = "auto", as_json: JsonOpt = False, force: ForceOpt = False,
) -> None:
    """Judge a suspect model with one or more keys. The verdict is data, not an exit code (exit 0). Each verdict
    ends with its time line: proven only by an RFC 3161 token over its --commitment that verifies against a
    --tsa-cert, else 'time not proven' ('created' is the owner's own statement)."""
    from .errors import KeyMismatchError

    s = None
    keys: list[Path] = []
    try:
        if len(paths) < 2:
            raise ModelSealError("verify needs KEY [KEY ...] SUSPECT")
        keys, suspect = [Path(p) for p in paths[:-1]], paths[-1]
        if commitment and len(commitment) != len(keys):
            raise ModelSealError(f"give one --commitment per key ({len(keys)}), got {len(commitment)}")
        if evidence and len(evidence) != len(keys):
            raise ModelSealError(f"give one --evidence per key ({len(keys)}), got {len(evidence)}")
        if timestamp and (not commitment or len(timestamp) != len(keys)):
            raise ModelSealError(f"give one --timestamp per key ({len(keys)}), each with its --commitment")
        check_outputs([(f"--evidence {i + 1}", e) for i, e in enumerate(evidence or [])], force,
                      inputs={**{f"KEY {i + 1}": k for i, k in enumerate(keys)}, "SUSPECT": Path(suspect),
                              **{f"--commitment {i + 1}": c for i, c in enumerate(commitment or [])}})
        _check_inputs_exist({f"KEY {i + 1}" if len(keys) > 1 else "KEY": k for i, k in enumerate(keys)}, suspect)
        from .api import verify as verify_fn

        sig, judges = None, list[Any](keys)
        if arch is not None:
            from .keys import Key

            judges[0] = Key.load(keys[0])  # loaded once: its signature shapes the suspect, then it judges
            sig = judges[0].signature
        kw = _verifier_kw(alpha, max_queries, set_, reference, device, arch, sig)
        if references is not None:
            from .references import load_pool
            from .runtime import resolve_device

            kw["references"] = load_pool(references, device=resolve_device(device)).plus(kw.get("references", []))
        from .sources import RemoteOptions
        from .suspect import open_source

        options = RemoteOptions(max_queries=max_queries, reshape=reshape, token_env=token_env, timeout=timeout,
                                retries=retries, rate_limit=rate_limit, input_name=input_name,
                                output_name=output_name, max_batch=max_batch, label_only=label_only)
        s = open_source(suspect, options, device=device, arch=arch, signature=sig)
        if len(keys) == 1:
            verdict = verify_fn(s, judges[0], commitment=commitment[0] if commitment else None,
                                evidence=evidence[0] if evidence else None, force=force,
                                timestamp=timestamp[0] if timestamp else None, tsa_certs=tsa_cert, **kw)
        else:
            verdict = verify_fn(s, judges, commitment=commitment, evidence=evidence, force=force,
                                timestamp=timestamp, tsa_certs=tsa_cert, **kw)
    except KeyMismatchError as e:
        raise KeyMismatchError(f"{e}{_shape_hint(s, keys)}") from None
    _emit(as_json, verdict.to_dict(), lambda: out.print(_verdict_text(verdict)))


@app.command(epilog=_examples(
    "modelseal lineage owner.safetensors pruned.safetensors --permutations 9999",
    "modelseal lineage owner.safetensors pruned.safetensors --references verifier-refs --json",
    "modelseal lineage mine.safetensors theirs.safetensors --arch mynet:make_net --data digits",
    "modelseal lineage my-gpt2-folder their-gpt2-folder --permutations 99999"))
def lineage(
    owner: Annotated[Path, typer.Argument(metavar="OWNER",
        help="the owner's model file (.safetensors; with --arch a state dict), or a Hugging Face decoder "
             "checkpoint folder (config.json + *.safetensors, GPT-2 or Llama layout)")],
    suspect: Annotated[str, typer.Argument(metavar="SUSPECT",
        help="suspect: model file (white-box and black-box parts), .onnx file or http(s):// endpoint "
             "(black-box part only), or a checkpoint folder when OWNER is one")],
    references: Annotated[Optional[Path], typer.Option(
        "--references", help="the verifier's reference pool folder (`modelseal references make`): needed by the "
                             "black-box part")] = None,
    reference: Annotated[Optional[list[Path]], typer.Option(
        "--reference", help="a reference model file (repeat), added to --references")] = None,
    alpha: Annotated[Optional[float], typer.Option(
        help="false-accusation rate the verifier accepts (default 1e-6)")] = None,
    permutations: Annotated[int, typer.Option(
        help="Monte Carlo permutations of the exact weight test (its p-value floor is 1/(T+1))")] = 1_000_000,
    queries: Annotated[int, typer.Option(help="random inputs of the black-box part")] = 1000,
    arch: ArchOpt = None, data: DataOpt = None,
    device: DeviceOpt = "auto", seed: SeedOpt = 0, as_json: JsonOpt = False,
) -> None:
    """Keyless lineage test: was SUSPECT derived from OWNER? An exact permutation test on the weights, a test on
    aligned weights (robust to permuted and pruned units) and a black-box test against the verifier's reference
    models, fused with Holm. No key needed; exit 0 with the verdict."""
    from .lineage import lineage as lineage_fn
    from .safeio import _regular_input, usable_path
    from .sources import source_kind
    from .suspect import open_source

    rule: dict[str, Any] = {"permutations": permutations, "queries": queries, "seed": seed}
    if alpha is not None:
        rule["alpha"] = alpha
    folders = [usable_path(owner, what="OWNER").is_dir(),
               source_kind(suspect) != "url" and usable_path(suspect, what="SUSPECT").is_dir()]
    if any(folders):
        from .lineage import LineageError, lineage_checkpoints

        if not all(folders):
            which = "OWNER" if folders[0] else "SUSPECT"
            raise LineageError(f"{which} is a checkpoint folder and the other a model file: give two Hugging Face "
                               "checkpoint folders (config.json + *.safetensors) or two model files")
        if references is not None or reference or arch is not None:
            raise LineageError("checkpoint folders are compared by their weights only: --references, --reference "
                               "and --arch do not apply")
        verdict = lineage_checkpoints(owner, suspect, **rule)
        _emit(as_json, verdict.to_dict(), lambda: out.print(_verdict_text(verdict)))
        return
    _regular_input(usable_path(owner, what="OWNER"), ModelSealError, "OWNER")
    if source_kind(suspect) != "url" and not usable_path(suspect, what="SUSPECT").exists():
        raise ModelSealError(f"SUSPECT {suspect} does not exist")
    spec: Any = None
    if arch is not None:
        from . import data as data_mod

        if data is None:
            raise ModelSealError("--arch needs --data (the input shape of your architecture)")
        spec = data_mod.load(data, seed=0).meta
    own = _open_model(owner, device, arch, spec)
    signature = None
    if arch is not None:
        from .models import signature_of

        signature = signature_of(own)  # the user architecture's spec, from --data
    # --arch builds the owner (and a state-dict suspect); an ONNX file or an endpoint brings its own graph
    s = open_source(suspect, device=device, arch=arch if source_kind(suspect) == "file" else None,
                    signature=signature)
    refs: list[Any] = [_open_model(p, device, arch, spec) for p in reference or []]
    if references is not None:
        from .references import load_pool
        from .runtime import resolve_device

        refs = load_pool(references, device=resolve_device(device)).plus(refs)  # keeps the manifest
    verdict = lineage_fn(own, s, refs, **rule)
    _emit(as_json, verdict.to_dict(), lambda: out.print(_verdict_text(verdict)))


def _verdict_text(verdict) -> str:
    lines = [verdict.summary()]
    for v in verdict.details.get("verdicts", []):
        lines.append(f"  {v['method']}: p = {v['p_value']:.3g}" + ("" if v.get("judged", True) else
                                                                 f" (not judged: {v['details'].get('not_judged')})"))
    if "verdicts" in verdict.details:
        lines.append(f"  combined by {verdict.details['rule']}")
    lines += [f"  {line}" for line in verdict.notes()]
    return "\n".join(lines)


@app.command(epilog=_examples("modelseal check ev.json --commitment wm.public.json",
                              "modelseal check ev.json --commitment wm.public.json --suspect marked.safetensors",
                              "modelseal check ev.json --commitment wm.public.json --tsa-cert tsa-ca.pem "
                              "--suspect-since 2026-06-01",
                              "modelseal check ev.json --commitment wm.public.json --alpha 1e-9 --json"))
def check(
    evidence_path: Annotated[Path, typer.Argument(metavar="EVIDENCE",
        help="evidence file written by `verify --evidence`")],
    commitment: Annotated[Path, typer.Option(help="the owner's public commitment (JSON)")],
    alpha: Annotated[Optional[float], typer.Option(
        help="false-accusation rate the checker accepts (default 1e-6, as verify); never read from the file")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="the checker's test parameter NAME=VALUE (defaults: verify's; see `modelseal methods`)")] = None,
    suspect: Annotated[Optional[str], typer.Option(
        help="the suspect (model file, .onnx file or http(s):// endpoint): re-ask it every recorded query and "
             "fail if any answer differs")] = None,
    tsa_cert: TsaCertOpt = None,
    timestamp: Annotated[Optional[Path], typer.Option(
        help="RFC 3161 token over the commitment (default: PUBLIC.tsr beside --commitment)")] = None,
    suspect_since: Annotated[Optional[str], typer.Option(
        "--suspect-since", help="when the suspect was first seen (ISO 8601 date or date-time, UTC unless a zone "
                                "is given): the commitment's trusted time must be earlier")] = None,
    token_env: TokenEnvOpt = "MODELSEAL_TOKEN", timeout: TimeoutOpt = None,
    retries: RetriesOpt = None, rate_limit: RateLimitOpt = None, input_name: InputNameOpt = None,
    output_name: OutputNameOpt = None, label_only: LabelOnlyOpt = False, max_batch: MaxBatchOpt = None,
    reshape: ReshapeOpt = False, max_queries: MaxQueriesOpt = None, arch: ArchOpt = None,
    device: DeviceOpt = "auto", as_json: JsonOpt = False,
) -> None:
    """Re-check an evidence file under the checker's own rule: open the secrets against the public commitment,
    check the transcript is the committed one (no query skipped, repeated or reordered), recompute the
    statistic and p-value, and judge the answers with the checker's alpha and test parameters (never the
    file's). Without --suspect this proves the arithmetic, not which model answered; with --suspect the
    suspect is asked again. Time: only an RFC 3161 token over the commitment, verified offline against a
    --tsa-cert the checker trusts, proves the key existed before the suspect (--suspect-since); 'created' is
    the owner's own statement. Exit 0 only if the whole claim holds, time included; 1 if the answers do not
    hold; 3 if they hold but the time is not proven (a key ground after seeing the suspect looks the same);
    4 if the time is proven but not before --suspect-since (or --suspect-since is missing); 2 on an error
    (a bad, tampered, foreign or untrusted token included)."""
    from . import evidence as evidence_mod
    from .timestamp import parse_since

    rule = _params(set_)
    if alpha is not None:
        rule["alpha"] = alpha
    since = parse_since(suspect_since) if suspect_since is not None else None
    s = None
    if suspect is not None:
        from .sources import RemoteOptions
        from .suspect import open_source

        signature = None
        if arch is not None:  # a state dict of the user's architecture: shaped by the committed signature
            from . import commitment as commitment_mod

            signature = commitment_mod.load(commitment)["signature"]
        options = RemoteOptions(max_queries=max_queries, reshape=reshape, token_env=token_env, timeout=timeout,
                                retries=retries, rate_limit=rate_limit, input_name=input_name,
                                output_name=output_name, max_batch=max_batch, label_only=label_only)
        s = open_source(suspect, options, device=device, arch=arch, signature=signature)
    elif arch is not None or reshape or label_only or max_queries is not None:
        raise ModelSealError("--arch, --reshape, --label-only and --max-queries describe the --suspect; give it")
    report = evidence_mod.check(evidence_path, commitment, rule=rule, suspect=s, timestamp=timestamp,
                                tsa_certs=tsa_cert, suspect_since=since)

    def human() -> None:
        c = report["checker"] or {}
        verdict = (f"owned = {c.get('owned')} (p = {c['p_value']:.3g})" if "p_value" in c else "no verdict")
        if report["agrees"]:
            out.print(f"{report['method']}: the evidence holds: {verdict} under the checker's rule "
                      f"({evidence_mod.rule_text(report['rule'])})")
        else:
            out.print(f"{report['method']}: the evidence does NOT hold:")
            for p in report["problems"]:
                out.print(f"  - {p}")
        pool = (report.get("verifier") or {}).get("reference_pool")
        if isinstance(pool, dict):
            rng = pool.get("accuracy_range")
            out.print(f"  references: {pool.get('references')} model(s)"
                      + (f", manifest sha256 {str(pool['manifest_sha256'])[:16]}..." if pool.get("manifest_sha256")
                         else ", no manifest")
                      + (f", accuracy {rng[0]:.3f} to {rng[1]:.3f}" if isinstance(rng, list) and len(rng) == 2
                         else "")
                      + "".join(f"; flag: {f}" for f in pool.get("flags", [])), soft_wrap=True, highlight=False)
        out.print(f"  {report['time']['line']}")
        out.print(f"  {report['order']['line']}")
        for line in report["not_proved"]:
            out.print(f"  not proved: {line}")

    _emit(as_json, report, human)
    code = evidence_mod.OUTCOMES[report["outcome"]]
    if code:
        raise typer.Exit(code)


@app.command(epilog=_examples("modelseal commit wm.seal --out wm.public.json"))
def commit(
    key_path: Annotated[Path, typer.Argument(metavar="KEY", help="secret key of any method")],
    out_path: Annotated[Path, typer.Option("--out", help="public commitment file to write (JSON)")],
    as_json: JsonOpt = False, force: ForceOpt = False,
) -> None:
    """Write the public commitment of a key (safe to publish and timestamp). Keys made by modelseal already
    have one beside them (KEY.public.json); this re-derives it."""
    check_writable(out_path, force)
    check_distinct({"KEY": key_path, "--out": out_path})
    from . import commitment as commitment_mod
    from .keys import Key

    key = Key.load(key_path)
    commitment_mod.save(method_registry.commit(key), out_path, force=force)
    _emit(as_json, {"commitment": str(out_path)}, lambda: out.print(f"commitment -> {out_path}"))


@app.command("timestamp", epilog=_examples(
    "modelseal timestamp wm.public.json --tsa http://127.0.0.1:3161/tsa",
    "modelseal timestamp wm.public.json --tsa http://127.0.0.1:3161/tsa --tsa-cert tsa-ca.pem --json"))
def timestamp_cmd(
    commitment: Annotated[Path, typer.Argument(metavar="COMMITMENT", help="public commitment (JSON) to have stamped")],
    tsa: Annotated[str, typer.Option("--tsa", help="URL of an RFC 3161 time-stamping authority (HTTP POST)")],
    out_path: Annotated[Optional[Path], typer.Option(
        "--out", help="token file to write (default: PUBLIC.tsr beside the commitment)")] = None,
    tsa_cert: TsaCertOpt = None, timeout: Annotated[float, typer.Option(help="seconds to wait for the TSA")] = 30.0,
    as_json: JsonOpt = False, force: ForceOpt = False,
) -> None:
    """Have a TSA stamp a commitment (RFC 3161): the token proves the commitment existed by the TSA's time, so
    a key made after a suspect cannot claim to be older. Only the commitment's SHA-256 is sent. With
    --tsa-cert the token is verified before it is written."""
    from . import commitment as commitment_mod
    from . import timestamp as ts_mod

    if not tsa.startswith(("http://", "https://")):
        raise ModelSealError(f"--tsa takes an http(s):// URL of an RFC 3161 time-stamping authority, not {tsa!r}")
    target = out_path if out_path is not None else ts_mod.token_path(commitment)
    check_writable(target, force)
    check_distinct({"COMMITMENT": commitment, "--out": target})
    if not 0 < timeout <= 3600:
        raise ModelSealError(f"--timeout must be in (0, 3600] seconds, got {timeout}")
    public = commitment_mod.load(commitment)
    token = ts_mod.fetch(tsa, public, timeout=timeout)
    proof = ts_mod.verify_token(token, public, ts_mod.as_certs(tsa_cert)) if tsa_cert else None
    from .safeio import write_atomic

    write_atomic(target, token, force)
    payload: dict[str, Any] = {"token": str(target), "digest": ts_mod.commitment_digest(public).hex(),
                               "verified": proof is not None, **({"time": proof.to_dict()} if proof else {})}
    _emit(as_json, payload, lambda: out.print(
        f"token -> {target}\n  " + (proof.line() if proof else "not verified here: check it with --tsa-cert")))


# ---------------------------------------------------------------------------------------- lock/unlock
@app.command(epilog=_examples(
    "modelseal lock owner.safetensors --out locked.safetensors --key lock.seal",
    "modelseal lock owner.safetensors --set target_accuracy=0.2 --out locked.safetensors --key lock.seal --force"))
def lock(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="model file to lock")],
    out_path: Annotated[Path, typer.Option("--out", help="locked model file to write")],
    key_path: Annotated[Path, typer.Option("--key", help="unlock key file to write")],
    method: Annotated[str, typer.Option(help="lock method")] = method_registry.default("lock"),
    data: DataOpt = None, set_: SetOpt = None, arch: ArchOpt = None,
    device: DeviceOpt = "auto", seed: SecretSeedOpt = None, as_json: JsonOpt = False, force: ForceOpt = False,
) -> None:
    """Lock a model with adversarially perturbed parameters (AdvParams)."""

    seed, data = _before_protect(model_path, data, out_path, key_path, force, seed)
    locker = _construct(method_registry.require_family(method, "lock", "modelseal lock").cls,
                        {"seed": seed, **_params(set_)})
    before, after, key = _protect_file(locker, model_path, data, device, out_path, key_path, force, as_json, arch)
    changed = int(key.params.get("changed", len(next(iter(key.tensors.values()), []))))
    payload = {"test_metric_before": before, "test_metric_locked": after, "changed_params": changed,
               "model": str(out_path), "key": str(key_path)}
    _emit(as_json, payload, lambda: out.print(
        f"locked: test metric {before:.4f} -> {after:.4f} ({changed} parameters changed); "
        f"model -> {out_path}, key -> {key_path}"))


@app.command(epilog=_examples("modelseal unlock locked.safetensors lock.seal --out restored.safetensors"))
def unlock(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="locked model file")],
    key_path: Annotated[Path, typer.Argument(metavar="KEY", help="unlock key")],
    out_path: Annotated[Path, typer.Option("--out", help="restored model file to write")],
    arch: ArchOpt = None,
    device: DeviceOpt = "auto", as_json: JsonOpt = False, force: ForceOpt = False,
) -> None:
    """Restore a locked model bit-exactly."""
    check_writable(out_path, force)
    check_distinct({"MODEL": model_path, "KEY": key_path, "--out": out_path})
    from .api import unlock as unlock_fn
    from .keys import Key

    sig = Key.load(key_path).signature if arch is not None else None
    from .models.files import write_model

    restored = unlock_fn(_open_model(model_path, device, arch, sig), key_path)
    write_model(restored, out_path, force, arch)
    _emit(as_json, {"model": str(out_path)}, lambda: out.print(f"unlocked -> {out_path}"))


# ------------------------------------------------------------------------------------------- serve
@app.command(epilog=_examples("modelseal serve marked.safetensors --port 8080",
                              "modelseal serve marked.onnx --port 8081 --label-only --token-env MY_TOKEN"))
def serve(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="modelseal model file or .onnx file")],
    port: Annotated[int, typer.Option(help="TCP port")] = 8080,
    host: Annotated[str, typer.Option(help="address to bind (loopback by default)")] = "127.0.0.1",
    name: Annotated[str, typer.Option(help="model name in the URL /v2/models/NAME")] = "model",
    label_only: Annotated[bool, typer.Option("--label-only", help="answer with the top class only", metavar="")]
        = False,
    token_env: Annotated[Optional[str], typer.Option(help="env var with a bearer token to require")] = None,
    max_batch: Annotated[int, typer.Option(help="largest batch a request may carry")] = 4096,
    guard: Annotated[Optional[Path], typer.Option(
        help="API watermark key (`modelseal guard key`): change a keyed fraction of answers, logged per client")]
        = None,
    guard_log: Annotated[Optional[Path], typer.Option(help="folder of the guard's per-client logs")] = None,
    arch: ArchOpt = None,
    device: DeviceOpt = "auto", as_json: JsonOpt = False,
) -> None:
    """Serve a model over the Open Inference Protocol (KServe v2, JSON and binary tensors), until Ctrl-C."""
    hook = None
    if guard is not None or guard_log is not None:
        if guard is None or guard_log is None:
            raise ModelSealError("--guard and --guard-log go together: the key and the folder of client logs")
        from .guard import Guard, GuardKey

        hook = Guard(GuardKey.load(guard), guard_log).serve_hook
    try:
        from .suspect.serve import run
    except ImportError as e:
        raise ModelSealError(f"serving needs the server extra: {e}") from None
    token = os.environ.get(token_env) if token_env else None
    if token_env and not token:
        raise ModelSealError(f"--token-env {token_env} is set but the variable is empty")
    from .sources import source_kind

    model: Any = model_path
    if arch is not None or (source_kind(model_path) != "onnx" and device != "cpu"):
        model = _open_model(model_path, device, arch)

    def ready(url: str) -> None:  # called once the server listens: "serving" is then true
        _emit(as_json, {"url": url, "model": str(model_path)},
              lambda: err.print(f"serving {model_path} at {url} (Ctrl-C stops)", soft_wrap=True))
        sys.stdout.flush()

    run(model, host=host, port=port, name=name, label_only=label_only, token=token, max_batch=max_batch,
        answer_hook=hook, on_ready=ready)
    if not as_json:
        err.print("stopped")


# -------------------------------------------------------------------------------------------- bench
@bench_app.command("run", epilog=_examples(
    "modelseal bench run tiny --out run                # runs, or resumes an interrupted run",
    "modelseal bench run my.toml --out run --max-cells 10",
    "modelseal bench run my.toml --out run --restart   # discard run/results.sqlite and run/cache, start over",
    "modelseal bench run demo --out run --backend ray",
    "modelseal bench run demo --out run-ts --only trigger-set --seed 3"))
def bench_run(
    scenario: Annotated[str, typer.Argument(metavar="SCENARIO",
        help="scenario TOML file, or a built-in name: demo, tiny, arena")],
    out_dir: Annotated[Path, typer.Option("--out", help="run folder (results.sqlite, cache/)")],
    backend: Annotated[str, typer.Option(help="local | ray")] = "local",
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: a local Ray)")] = None,
    max_cells: Annotated[Optional[int], typer.Option(help="stop after this many cells (resume later)")] = None,
    restart: Annotated[bool, typer.Option(
        "--restart", metavar="", help="start over: delete the run folder's results.sqlite and cache/ first. Without "
                                      "it a run resumes: finished cells are kept and skipped")] = False,
    only: OnlyOpt = None,
    seed: Annotated[Optional[int], typer.Option(
        "--seed", help="run with this one seed (owner and cells) instead of the scenario's seeds")] = None,
    device: DeviceOpt = "auto", as_json: JsonOpt = False,
    force: Annotated[bool, typer.Option("--force", hidden=True, metavar="")] = False,
) -> None:
    """Run a scenario, or resume it: protections x attacks x parameters x seeds, stored in SQLite."""
    from . import bench

    if force:
        raise ModelSealError("bench run resumes by default and never overwrites finished results; "
                             "pass --restart to discard them and start over")
    sc = bench.load(scenario)
    if only is not None or seed is not None:
        sc = sc.select(methods=_only(only), seed=seed)
    summary = bench.run(sc, out_dir, backend=backend, address=address, force=restart,
                        progress=_progress(as_json), max_cells=max_cells, device=device)
    # the progress bar counts cells and negatives (independent models judged): say both
    _emit(as_json, summary, lambda: out.print(
        f"{summary['ran']} cells ran, {summary['skipped_finished']} already finished, {summary['pending']} pending, "
        f"{summary['errors']} errors; {summary['negatives']} negatives judged ({summary['seconds']:.1f} s) -> "
        f"{summary['db']}" + (
            f"\nPARTIAL RUN: {summary['finished']} of {summary['planned']} planned cells finished, "
            f"{summary['pending']} not run; run the same command again to finish it" if summary["partial"] else ""),
        soft_wrap=True))


@bench_app.command("report", epilog=_examples("modelseal bench report run/results.sqlite --out report.html",
                                                     "modelseal bench report run/results.sqlite --out report.html "
                                                     "--force"))
def bench_report(
    db: Annotated[Path, typer.Argument(metavar="DB", help="results.sqlite of a run")],
    out_html: Annotated[Path, typer.Option("--out", help="HTML file to write")] = Path("report.html"),
    as_json: JsonOpt = False, force: ForceOpt = False,
) -> None:
    """Write one self-contained HTML report from a results database: what survived, then tables and plots."""
    from .bench.outcomes import read_rows, survival_from_db, threats
    from .bench.report import report, survival_table, threat_table

    check_distinct({"DB": db, "--out": out_html})
    path = report(db, out_html, force=force)
    rows = survival_from_db(db)
    _meta, cells, negatives, _arts, _keys = read_rows(db)
    threat_rows = threats(cells, negatives)

    def human() -> None:
        out.print(survival_table(rows))
        out.print(threat_table(threat_rows))
        out.print(f"report -> {path}")

    _emit(as_json, {"report": str(path), "survival": rows, "threats": threat_rows}, human)


@bench_app.command("arena", epilog=_examples(
    "modelseal bench arena --out arena-run                 # the built-in arena on digits (a few minutes)",
    "modelseal bench arena my.toml --out arena-run --backend ray",
    "modelseal bench arena --out arena-run --report arena.html --force --json"))
def bench_arena(
    scenario: Annotated[str, typer.Argument(metavar="SCENARIO",
        help="scenario TOML file or built-in name (default: arena)")] = "arena",
    out_dir: Annotated[Path, typer.Option("--out", help="run folder (results.sqlite, cache/)")] = Path("arena-run"),
    report_html: Annotated[Optional[Path], typer.Option(
        "--report", help="HTML report to write (default: OUT/report.html)")] = None,
    backend: Annotated[str, typer.Option(help="local | ray")] = "local",
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: a local Ray)")] = None,
    restart: Annotated[bool, typer.Option(
        "--restart", metavar="", help="start over: delete the run folder's results.sqlite and cache/ first")] = False,
    max_cells: Annotated[Optional[int], typer.Option(
        help="stop after this many cells (resume later; the report then covers what finished)")] = None,
    only: OnlyOpt = None,
    seed: Annotated[Optional[int], typer.Option(
        "--seed", help="run with this one seed (owner and cells) instead of the scenario's seeds")] = None,
    device: DeviceOpt = "auto", as_json: JsonOpt = False, force: ForceOpt = False,
) -> None:
    """Score every protection and peer baseline over populations of derived and independent models: ROC AUC,
    TPR at 1 % and 0.1 % FPR, TPR at alpha with the realised FPR (runs or resumes the scenario, then reports)."""
    from . import bench
    from .bench.arena import arena_from_db
    from .bench.outcomes import read_rows, threats
    from .bench.report import arena_table, report, threat_table
    from .safeio import check_writable

    html_path = report_html if report_html is not None else out_dir / "report.html"
    check_distinct({"--out": out_dir, "--report": html_path})
    check_writable(html_path, force)  # refused before hours of work, not after
    sc = bench.load(scenario)
    if only is not None or seed is not None:
        sc = sc.select(methods=_only(only), seed=seed)
    summary = bench.run(sc, out_dir, backend=backend, address=address, force=restart,
                        progress=_progress(as_json), max_cells=max_cells, device=device)
    path = report(summary["db"], html_path, force=force)
    rows = [{k: v for k, v in r.items() if k not in ("fpr", "tpr")} for r in arena_from_db(summary["db"])]
    _meta, cells, negatives, _arts, _keys = read_rows(summary["db"])
    threat_rows = threats(cells, negatives)

    def human() -> None:
        out.print(arena_table(rows))
        out.print(threat_table(threat_rows))
        out.print(f"{summary['negatives']} negative verdicts, {summary['cells']} cells ({summary['seconds']:.1f} s); "
                  f"report -> {path}", soft_wrap=True)

    _emit(as_json, {"run": summary, "report": str(path), "arena": rows, "threats": threat_rows}, human)


# --------------------------------------------------------------------------------------------- demo
@app.command(epilog=_examples("modelseal demo --out demo-out", "modelseal demo --out demo-out --force --json",
                              "modelseal demo --out demo-ts --only trigger-set,tafa   # two protections only"))
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="folder for the database and the report")] =
        Path("demo-out"),
    only: OnlyOpt = None,
    device: DeviceOpt = "auto", seed: SeedOpt = 0, as_json: JsonOpt = False, force: ForceOpt = False,
) -> None:
    """The main job: protect an owner CNN on mnist5k with every method, attack it, and judge."""
    from .demo import run_demo

    result = run_demo(out_dir, device=device, seed=seed, force=force, progress=_progress(as_json),
                      methods=_only(only))
    if as_json:
        _emit(True, result, lambda: None)
        return
    from .bench.report import survival_table

    table = Table(title=f"modelseal demo on mnist5k ({result['seconds']:.0f} s): every model judged")
    for col in ("protection", "model", "test acc", "verdict", "p-value / detail"):
        table.add_column(col)
    for r in result["rows"]:
        table.add_row(r["protection"], r["model"], f"{r['accuracy']:.3f}", r["verdict"], r["detail"])
    out.print(table)
    out.print(survival_table(result["survival"]))
    # the progress bar counted both kinds of work: say both, so its total matches
    out.print(f"{result['cells']} cells and {result['negatives']} independent models judged "
              f"({result['cells'] + result['negatives']} in the progress bar)")
    out.print(f"results -> {result['out_dir']} (report: {result['report']})")


@app.command("methods", epilog=_examples("modelseal methods", "modelseal methods trigger-set",
                                         "modelseal methods prune --json"))
def list_methods(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME",
        help="a method or attack: list its parameters")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the protection methods and attacks, or one's parameters (type, default, range, meaning)."""
    if name is None:
        names = {"methods": method_registry.names(), "attacks": attack_registry.names()}
        _emit(as_json, names, lambda: out.print(
            f"methods: {', '.join(names['methods'])}\nattacks: {', '.join(names['attacks'])}\n"
            "parameters of one: modelseal methods NAME"))
        return
    from . import schema

    kinds = {"method": method_registry._available(), "attack": attack_registry._available()}
    kind = next((k for k, table in kinds.items() if name in table), None)
    if kind is None:
        raise ModelSealError(f"unknown method or attack '{name}'; known: "
                             f"{', '.join(method_registry.names() + attack_registry.names())}")
    try:
        declared = schema.read(kinds[kind][name], name, "protection" if kind == "method" else "attack")
    except (LookupError, SyntaxError, ValueError) as e:
        raise ModelSealError(f"cannot read the parameters of '{name}': {e}") from None

    def listed(specs: list) -> list[dict[str, Any]]:
        return [{**s.to_dict(), "default": repr(s.default)} for s in specs]

    params, rule = listed(declared["params"]), listed(declared["verifier"]) if kind == "method" else []
    payload: dict[str, Any] = {"name": name, "kind": kind, "params": params}
    if kind == "method":
        payload["verifier_params"] = rule

    def human() -> None:
        from rich.padding import Padding
        from rich.text import Text

        def show(title: str, items: list) -> None:
            out.print(Text(title, style="bold"))
            for p in items:
                out.print(Text.assemble((p["name"], "bold cyan"), f"  {p['type']} = {p['default']}",
                                        f"   range: {p['range']}"))
                out.print(Padding(Text(p["meaning"]), (0, 0, 0, 4), expand=False))

        how = "when protecting" if kind == "method" else f"on `modelseal attack {name}`"
        show(f"{kind} {name}: parameters (set with --set NAME=VALUE {how})", params)
        if rule:
            show("verifier parameters (the verifier's rule, never read from a key: `verify --alpha` and "
                 "`verify --set NAME=VALUE`)", rule)

    _emit(as_json, payload, human)


def _usage_errors() -> tuple[type[BaseException], ...]:
    """Usage errors of the argument parser: typer's own (it vendors click) and click's."""
    kinds: list[type[BaseException]] = [k for k in (getattr(typer, "TyperException", None),) if k]
    try:
        import click

        kinds.append(click.exceptions.ClickException)
    except ImportError:  # pragma: no cover - typer without click
        pass
    return tuple(kinds)


# ----------------------------------------------------------------------------------- API watermark
guard_app = typer.Typer(**_TYPER, help="API watermark (DAWN): keyed changed answers, logged per client.",
                        epilog=_examples("modelseal guard key --classes 10 --out guard.seal",
                                         "modelseal serve owner.safetensors --label-only --guard guard.seal "
                                         "--guard-log guard-logs"))
app.add_typer(guard_app, name="guard")


@guard_app.command("key", epilog=_examples("modelseal guard key --classes 10 --out guard.seal",
                                           "modelseal guard key --classes 10 --rate 0.01 --out guard-1pct.seal --json"))
def guard_key(
    classes: Annotated[int, typer.Option(help="classes the served model answers")],
    out_path: Annotated[Path, typer.Option("--out", help="secret guard key to write (.seal, mode 0600)")],
    rate: Annotated[float, typer.Option(help="fraction of distinct inputs whose answer is changed")] = 0.005,
    levels: Annotated[int, typer.Option(help="canonical input: rounding steps per unit of the input range")] = 64,
    bounds: Annotated[str, typer.Option(help="input range LO,HI the canonical form clips to")] = "0,1",
    as_json: JsonOpt = False, force: ForceOpt = False,
) -> None:
    """Make a guard key (secret from the OS) and its public commitment beside it (KEY.public.json)."""
    from . import guard as guard_mod
    from .safeio import commitment_path, write_files

    try:
        lo, hi = (float(v) for v in bounds.split(","))
    except ValueError:
        raise ModelSealError(f"--bounds takes LO,HI (e.g. 0,1), not {bounds!r}") from None
    gk = guard_mod.GuardKey.new(classes, rate=rate, levels=levels, bounds=(lo, hi))
    pub = commitment_path(out_path)
    write_files([(out_path, gk.to_key().to_bytes()), (pub, json.dumps(gk.commitment(), indent=1) + "\n")], force,
                private=[out_path], names=["--out", "commitment"])
    _emit(as_json, {"key": str(out_path), "commitment": str(pub), **gk.params()},
          lambda: out.print(f"guard key -> {out_path} (commitment {pub}); serve with --guard {out_path}"))


@guard_app.command("verify", epilog=_examples(
    "modelseal guard verify guard.seal student.safetensors --log guard-logs/0123456789abcdef.log.jsonl"))
def guard_verify(
    key_path: Annotated[Path, typer.Argument(metavar="KEY", help="the guard key")],
    suspect: Annotated[str, typer.Argument(metavar="SUSPECT",
        help="suspect: model file, .onnx file or http(s):// endpoint")],
    log: Annotated[Path, typer.Option(help="one client's log (CLIENT.log.jsonl in the --guard-log folder)")],
    head: Annotated[Optional[Path], typer.Option(help="the client's committed head (CLIENT.head.json)")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="false-accusation rate the verifier accepts (1e-6)")] = None,
    arch: ArchOpt = None, device: DeviceOpt = "auto", as_json: JsonOpt = False,
) -> None:
    """Was SUSPECT trained on this client's answers? Exact binomial test of its matches with the keyed labels
    on the logged inputs (null match rate at most 1/(C-1)); names the client. Exit 0 with the verdict."""
    from . import guard as guard_mod
    from .suspect import open_source

    s = open_source(suspect, device=device, arch=arch)
    v = guard_mod.verify(s, key_path, log, head=head, alpha=alpha if alpha is not None else 1e-6)
    _emit(as_json, v.to_dict(), lambda: out.print(
        f"{_verdict_text(v)}\n  client {v.details['client']}: {v.details['matches']} of {v.details['entries']} "
        "keyed answers reproduced"))


# -------------------------------------------------------------------------------------- references
references_app = typer.Typer(**_TYPER, help="Reference pools: independent models that estimate a null.",
                             epilog=_examples("modelseal references make --data digits --n 99 --out refs"))
app.add_typer(references_app, name="references")


@references_app.command("make", epilog=_examples(
    "modelseal references make --data digits --n 19 --arch mlp --out verifier-refs --seed 5000",
    "modelseal references make --data digits --n 99 --arch mlp --epochs 3 --out extraction-refs --seed 1000",
    "modelseal train --data digits --arch mlp --epochs 30 --lr 0.003 --split attacker --out independent.safetensors",
    "modelseal verify ce.seal independent.safetensors --references verifier-refs --alpha 0.05   # a converged "
    "suspect: the pool covers it"))
def references_make(
    out_dir: Annotated[Path, typer.Option("--out", help="pool folder (models + pool.json); reused and grown")],
    data: DataOpt = "digits",
    n: Annotated[int, typer.Option("--n", help="number of reference models")] = 99,
    arch: Annotated[str, typer.Option(
        "--arch", help="comma-separated families (mlp, cnn) or zoo architectures, cycled")] = "mlp,cnn",
    epochs: Annotated[Optional[int], typer.Option(
        help="training epochs per model (default: until the test accuracy plateaus, so that the references "
             "look like a properly trained independent suspect)")] = None,
    split: Annotated[str, typer.Option(help="split to train on: the attacker split the owner did not use")]
        = "attacker",
    seed: Annotated[int, typer.Option("--seed", help="seed of model 0 (model i gets seed + i); use different "
                                      "seeds for extraction and verifier pools")] = 1000,
    as_json: JsonOpt = False, device: DeviceOpt = "auto", batch_size: BatchOpt = 64,
) -> None:
    """Train (or reuse) R independent reference models, cached in a folder with a manifest (pool.json: how each
    model was made, its accuracy and file SHA-256). Models already there are kept."""
    from .references import make_pool

    doc = make_pool(data, n, out_dir, archs=arch, epochs=epochs, seed=seed, split=split, batch_size=batch_size,
                    device=device, progress=_progress(as_json))
    accs = [m["test_accuracy"] for m in doc["models"]]
    payload = {"folder": str(out_dir), "models": len(doc["models"]), "settings": doc["settings"],
               "manifest": str(out_dir / "pool.json"), "test_accuracy_min": min(accs),
               "test_accuracy_max": max(accs), "test_accuracy_mean": sum(accs) / len(accs)}
    _emit(as_json, payload, lambda: out.print(
        f"{len(accs)} reference models in {out_dir} (test accuracy {min(accs):.3f} to {max(accs):.3f}; "
        f"manifest {out_dir / 'pool.json'})"))


def _aborts() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [typer.Abort]
    try:
        import click

        kinds.append(click.exceptions.Abort)
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that temporary files are removed on the way out."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """A Python warning reaches a user as one plain line on stderr, never with its source file and line."""
    from rich.markup import escape

    err.print(f"[yellow]warning:[/] {escape(_one_line(message))}", soft_wrap=True, highlight=False)


def _usage_message(e: BaseException) -> str:
    """click's message, except for a mistyped option: the closest option first (click lists its guesses in
    alphabetical order, so `--epoch` was answered with `--arch, --epochs`)."""
    import difflib

    name, guesses = getattr(e, "option_name", None), getattr(e, "possibilities", None)
    if type(e).__name__ == "NoSuchOption" and isinstance(name, str) and guesses:
        best = sorted(guesses, key=lambda g: -difflib.SequenceMatcher(None, name, g).ratio())
        more = f" (or {', '.join(best[1:3])})" if len(best) > 1 else ""
        return f"No such option: {name}; did you mean {best[0]}?{more}"
    return _one_line(e.format_message())  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    """The `modelseal` program: runs the command line and turns every failure into one line on stderr.

    Exit codes: 0 success, 2 any error (a ModelSealError, a usage error, or an unexpected exception, which
    also says so), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). `--debug` (anywhere before `--`) or
    MODELSEAL_DEBUG=1 also prints the traceback. An interrupted write leaves the old file or none: files
    are written to a temporary name and renamed, and pairs are renamed with signals held.
    """
    global _debug, _debug_flag
    args = list(sys.argv[1:] if argv is None else argv)
    cut = args.index("--") if "--" in args else len(args)
    _debug_flag = "--debug" in args[:cut]
    _debug = _debug_flag or _debug_from_env()
    args = [a for a in args[:cut] if a != "--debug"] + args[cut:]
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    import warnings

    old_show, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        code = app(args=args, prog_name="modelseal", standalone_mode=False)
        code = code if isinstance(code, int) else 0
        if code == 130:  # typer turns KeyboardInterrupt into Exit(130)
            _error_line("interrupted; no partial file was left behind")
        return code
    except _usage_errors() as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `modelseal` alone, or a group alone: its help
            e.show()  # type: ignore[attr-defined]
            return 2
        if _debug:
            traceback.print_exception(e)
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _error_line(_usage_message(e) + hint)
        return 2
    except _aborts():
        _error_line("aborted")
        return 2
    except KeyboardInterrupt:
        _error_line("interrupted; no partial file was left behind")
        return 130
    except Terminated:
        _error_line("terminated; no partial file was left behind")
        return 143
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except ModelSealError as e:
        if _debug:
            traceback.print_exception(e)
        _error_line(_one_line(e))
        return 2
    except OSError as e:  # a path the system refuses (a name too long, no permission): the user's input
        if _debug:
            traceback.print_exception(e)
        name = str(e.filename or "")
        where = f"{name if len(name) <= 80 else name[:50] + '...' + name[-20:]}: " if name else ""
        _error_line(f"the system refused {where}{e.strerror or _one_line(e)}")
        return 2
    except Exception as e:  # the top level: no traceback reaches a user unless asked for
        if _debug:
            traceback.print_exception(e)
        hint = "" if _debug else "; run with --debug for the traceback"
        _error_line(f"unexpected {type(e).__name__}: {_one_line(e)}{hint} (please report it)")
        return 2
    finally:
        warnings.showwarning = old_show
        _debug = _debug_flag = False
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
