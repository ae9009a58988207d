"""Plugins: a method and an attack from another installed package join `modelseal methods`, the CLI and
`bench run` through the entry-point groups `modelseal.methods` and `modelseal.attacks`, with no change to
modelseal. The test installs a tiny distribution the way pip leaves one on disk (a package next to its
`.dist-info` folder with METADATA and entry_points.txt) and runs modelseal in a fresh interpreter that sees it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def _install(site: Path, entry_points: str) -> None:
    pkg = site / "msplugin_toys"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Toy modelseal plugins."""\n')
    shutil.copy(TESTS / "toy_method.py", pkg / "method.py")
    shutil.copy(TESTS / "toy_attack.py", pkg / "attack.py")
    info = site / "msplugin_toys-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: msplugin-toys\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    (info / "RECORD").write_text("")


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{SRC}"}
    return subprocess.run([sys.executable, "-m", "modelseal.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


ENTRY_POINTS = ("[modelseal.methods]\ntest-output-bias = msplugin_toys.method\n\n"
                "[modelseal.attacks]\ntest-scale-head = msplugin_toys.attack\n")


@pytest.mark.slow
def test_an_installed_plugin_is_listed_and_runs_through_the_cli_and_the_bench(tmp_path):
    site = tmp_path / "site"
    _install(site, ENTRY_POINTS)
    listed = _run(site, tmp_path, "methods", "--json")
    assert listed.returncode == 0, listed.stderr
    names = json.loads(listed.stdout)
    assert "test-output-bias" in names["methods"] and "test-scale-head" in names["attacks"]
    about = _run(site, tmp_path, "methods", "test-output-bias", "--json")
    assert about.returncode == 0 and json.loads(about.stdout)["kind"] == "method", about.stderr

    (tmp_path / "toys.toml").write_text('name = "toys"\ndata = "digits"\nseeds = [0]\n[owner]\narch = "mlp"\n'
                                        'epochs = 2\n[[protections]]\nmethod = "test-output-bias"\n'
                                        'params = { shift = 30.0 }\n[[attacks]]\nname = "test-scale-head"\n'
                                        'params = { factor = 2.0 }\n[negatives]\ncount = 1\nepochs = 1\n')
    ran = _run(site, tmp_path, "bench", "run", "toys.toml", "--out", "run", "--json")
    assert ran.returncode == 0, ran.stderr[-2000:]
    summary = json.loads(ran.stdout)
    assert summary["errors"] == 0 and summary["finished"] == 2

    trained = _run(site, tmp_path, "train", "--data", "digits", "--arch", "mlp", "--epochs", "1", "--out",
                   "o.safetensors")
    assert trained.returncode == 0, trained.stderr
    made = _run(site, tmp_path, "protect", "o.safetensors", "--method", "test-output-bias", "--out", "m.safetensors",
                "--key", "k.seal", "--seed", "1")
    assert made.returncode == 0, made.stderr
    judged = _run(site, tmp_path, "verify", "k.seal", "m.safetensors", "--json")
    assert judged.returncode == 0 and json.loads(judged.stdout)["owned"] is True, judged.stderr


def test_a_plugin_cannot_replace_a_built_in_and_a_broken_one_is_one_line(tmp_path):
    site = tmp_path / "site"
    _install(site, "[modelseal.methods]\ntrigger-set = msplugin_toys.method\nbroken = msplugin_toys.nosuchmodule\n")
    about = _run(site, tmp_path, "methods", "trigger-set", "--json")
    assert about.returncode == 0 and json.loads(about.stdout)["name"] == "trigger-set", about.stderr
    assert json.loads(_run(site, tmp_path, "methods", "--json").stdout)["methods"].count("trigger-set") == 1
    r = _run(site, tmp_path, "protect", "x.safetensors", "--method", "broken", "--key", "b.seal")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "broken" in lines[0] and "msplugin_toys.nosuchmodule" in lines[0], r.stderr
