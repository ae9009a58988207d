"""The command line helps: an example in every --help, plain flags, `methods NAME` lists parameters, and
`modelseal --help` / `modelseal methods` start without importing torch."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from modelseal import attacks, methods
from modelseal.cli import app

runner = CliRunner()
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _commands(cmd: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    if getattr(cmd, "commands", None):  # a group (typer may ship its own click)
        for name, sub in cmd.commands.items():
            out += _commands(sub, (*path, name))
    return out


ALL = _commands(typer.main.get_command(app))


@pytest.mark.parametrize("path", ALL, ids=[" ".join(p) or "modelseal" for p in ALL])
def test_every_help_has_an_example_and_plain_flags(path):
    r = runner.invoke(app, [*path, "--help"])
    assert r.exit_code == 0, r.output
    assert "Examples:" in r.output
    examples = r.output.split("Examples:")[1]
    assert "modelseal " + " ".join(path) in examples
    assert "<bool>" not in r.output and "--no-" not in r.output  # booleans are plain flags


_PROBE = """
import json, sys
from modelseal.cli import app
sys.argv = ["modelseal", *sys.argv[1:]]
try:
    app()
except SystemExit as e:
    code = e.code
else:
    code = 0
print("MODULES=" + json.dumps(sorted(sys.modules)))
sys.exit(code)
"""


def _imported_modules(*args: str) -> set[str]:
    """The modules loaded by one real `modelseal ARGS` process (sys.modules at its exit)."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    mods = set(json.loads(r.stdout.rsplit("MODULES=", 1)[1]))
    assert {"modelseal.cli", "modelseal.methods", "typer"} <= mods  # the probe saw the command line run
    return mods


@pytest.mark.parametrize("args", [["--help"], ["methods"], ["methods", "tafa"], ["verify", "--help"]])
def test_help_and_methods_do_not_import_torch(args):
    mods = _imported_modules(*args)
    heavy = {m for m in mods if m.split(".")[0] in ("torch", "numpy", "scipy", "matplotlib", "onnxruntime")}
    assert not heavy, sorted(heavy)[:10]


def test_methods_name_lists_every_field_with_type_default_range_and_meaning():
    for name in methods.names():
        r = runner.invoke(app, ["methods", name, "--json"])
        assert r.exit_code == 0, r.output
        listed = {p["name"]: p for p in json.loads(r.stdout)["params"]}
        fields = {f.name for f in dataclasses.fields(methods.get(name)) if f.name != "progress"}
        assert set(listed) == fields, name
    tafa = {p["name"]: p for p in json.loads(runner.invoke(app, ["methods", "tafa", "--json"]).stdout)["params"]}
    assert tafa["n"]["type"] == "int" and tafa["n"]["default"] == "300" and tafa["n"]["range"] == "[3, 100000]"
    assert "boundary points" in tafa["n"]["meaning"]
    ce = {p["name"]: p for p in json.loads(runner.invoke(app, ["methods", "c-examples", "--json"]).stdout)["params"]}
    assert ce["variant"]["range"] == "c | rc | ltrc" and ce["radius"]["range"].startswith("(0, 1.41")
    human = runner.invoke(app, ["methods", "advparams"])
    assert human.exit_code == 0 and "max_params" in human.output and "[0, 1]" in human.output
    r = runner.invoke(app, ["methods", "prune", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["kind"] == "attack"
    r = runner.invoke(app, ["methods", "nosuch"])
    assert r.exit_code == 2 and "unknown method or attack" in r.output


def test_methods_name_lists_the_verifiers_parameters_as_the_class_declares_them():
    """The verifier's rule (alpha and the test's parameters) is listed from `verify_params`, read from source:
    names, defaults and meanings agree with the imported class, so the listing cannot drift."""
    for name in methods.names():
        r = runner.invoke(app, ["methods", name, "--json"])
        assert r.exit_code == 0, r.output
        listed = {p["name"]: p for p in json.loads(r.stdout)["verifier_params"]}
        declared = methods.get(name).verify_params
        assert set(listed) == set(declared), name
        for k, spec in declared.items():
            assert listed[k]["default"] == repr(spec.default) and listed[k]["meaning"] == spec.meaning, (name, k)
        if declared:
            assert listed["alpha"]["range"] == "(0, 1)" and listed["alpha"]["default"] == "1e-06"
    human = runner.invoke(app, ["methods", "tafa"])
    assert "verifier parameters" in human.output and "permutations" in human.output
    assert "verifier_params" not in json.loads(runner.invoke(app, ["methods", "prune", "--json"]).stdout)


def test_attack_names_known_without_import_match_the_registry():
    import importlib

    for mod in set(attacks._MODULES.values()):
        importlib.import_module(mod)
    assert set(attacks._REGISTRY) == set(attacks._MODULES)


def test_bench_run_force_is_not_restart(tmp_path):
    r = runner.invoke(app, ["bench", "run", "tiny", "--out", str(tmp_path / "run"), "--force"])
    assert r.exit_code == 2 and "--restart" in r.output
    assert not (tmp_path / "run").exists()
    r = runner.invoke(app, ["bench", "run", "--help"])
    assert "--restart" in r.output and "--force" not in r.output


def test_version_short_help_and_usage_metavars():
    """`--version`, `-h` everywhere, and usage lines that name arguments as a user does (issue 40)."""
    from typer.testing import CliRunner

    from modelseal import __version__
    from modelseal.cli import app

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"modelseal {__version__}"
    for args in (["-h"], ["verify", "-h"], ["guard", "key", "-h"], ["watermark", "embed", "-h"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0 and "Usage:" in r.output, (args, r.output)
    usage = CliRunner().invoke(app, ["unlock", "-h"]).output.splitlines()[0]
    assert "{MODEL} {KEY}" in usage and "model_path" not in usage, usage


def test_dir_lists_only_public_names():
    import modelseal as ms

    names = [n for n in dir(ms) if not n.startswith("__")]
    assert "verify" in names and "Key" in names and "timestamp" in names
    assert not {"Any", "TYPE_CHECKING", "importlib"} & set(dir(ms))


def test_a_mistyped_option_is_answered_with_the_closest_option_first(capsys):
    from modelseal.cli import main

    assert main(["train", "--epoch", "3"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "did you mean --epochs?" in line and line.index("--epochs") < line.index("--arch")
    assert main(["verify", "k.seal", "m.safetensors", "--refrence", "r"]) == 2
    assert "did you mean --reference?" in capsys.readouterr().err


@pytest.mark.parametrize("command", [("verify",), ("trace",), ("unlock",)])
def test_commands_whose_work_has_no_randomness_take_no_seed(command):
    """`--seed` used to be accepted and ignored by verify, trace and unlock: they are deterministic, so the
    option is gone (a user who passes it learns so) rather than silently doing nothing."""
    import typer.main

    cmd = typer.main.get_command(app)
    for part in command:
        cmd = cmd.commands[part]  # type: ignore[attr-defined]
    assert "--seed" not in {o for p in cmd.params for o in p.opts}


def test_serve_and_unlock_take_the_device_like_every_command():
    import typer.main

    cmds = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for name in ("serve", "unlock"):
        device = next(p for p in cmds[name].params if "--device" in p.opts)
        assert device.default == "auto", name
