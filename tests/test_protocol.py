"""One method protocol: layers without upward imports, family/verb errors that name the right command, and a
test-only method that runs through `bench run`, `verify` and the report with no change elsewhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import modelseal as ms
from modelseal import methods
from modelseal.cli import app

SRC = Path(ms.__file__).parent

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS = [
    {"errors", "_version", "validate", "verdict", "safeio", "tensorfile", "checkpoints", "keys", "stats", "commitment",
     "timestamp", "schema", "sources", "registry"},
    {"runtime"},
    {"data"},
    {"models"},
    {"train"},
    {"suspect"},
    {"references"},  # measures a suspect's accuracy against the pool it is judged with (coverage)
    {"attacks"},
    {"methods", "lineage", "guard", "guard_mlserver"},
    {"api", "evidence"},
    {"bench", "demo"},
    {"cli", "__main__"},
]


def _layer(component: str) -> int:
    for i, names in enumerate(LAYERS):
        if component in names:
            return i
    raise AssertionError(f"module modelseal.{component} is in no declared layer; add it to LAYERS (and the "
                         "architecture page, docs/architecture.md)")


def _imports(path: Path) -> list[tuple[str, int]]:
    rel = path.relative_to(SRC).with_suffix("")
    parts = ["modelseal", *rel.parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    package = parts if path.name == "__init__.py" else parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            out += [(n, node.lineno) for n in names]
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
    return [(m, line) for m, line in out if m == "modelseal" or m.startswith("modelseal.")]


def test_no_module_imports_upward():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts == ("__init__.py",):
            continue  # the package root re-exports the public API
        own = _layer(rel.parts[0].removesuffix(".py"))
        for mod, line in _imports(path):
            parts = mod.split(".")
            if len(parts) < 2:
                bad.append(f"{rel}:{line} imports the package root")
                continue
            if _layer(parts[1]) > own:
                bad.append(f"{rel}:{line} imports {mod} (layer {_layer(parts[1])} > {own})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


@pytest.mark.parametrize("args, right", [
    (["fingerprint", "extract", "M", "--key", "K", "--method", "deepmarks"], "modelseal deepmarks distribute"),
    (["fingerprint", "extract", "M", "--key", "K", "--method", "trigger-set"], "modelseal watermark embed"),
    (["fingerprint", "extract", "M", "--key", "K", "--method", "advparams"], "modelseal lock"),
    (["watermark", "embed", "M", "--out", "O", "--key", "K", "--method", "tafa"], "modelseal fingerprint extract"),
    (["watermark", "embed", "M", "--out", "O", "--key", "K", "--method", "c-examples"],
     "modelseal fingerprint extract"),
    (["watermark", "embed", "M", "--out", "O", "--key", "K", "--method", "deepmarks"],
     "modelseal deepmarks distribute"),
])
def test_family_verb_mismatch_names_the_right_command(tmp_path, args, right):
    # a real model file: the commands check MODEL (before importing torch) ahead of the method's family
    ms.models.save_model(ms.models.build("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0), tmp_path / "M")
    args = [str(tmp_path / a) if a in ("M", "K", "O") else a for a in args]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert right in r.output and "Traceback" not in r.output


def test_api_family_mismatch(tmp_path):
    key = ms.Key("tafa", params={"seed": 0}, signature={"input_shape": [1], "output_size": 1})
    # a command handed a key names the command that takes this key (issue 26 item 10)
    with pytest.raises(ms.ModelSealError, match="modelseal verify KEY SUSPECT"):
        ms.trace(torch.nn.Linear(1, 1), key)
    with pytest.raises(ms.ModelSealError, match="modelseal verify KEY SUSPECT"):
        ms.unlock(torch.nn.Linear(1, 1), key)


# ------------------------------------------------------------------------------------- a test-only method
@pytest.fixture
def toy_method():
    import toy_method as mod

    methods.register(mod.NAME, family="watermark", access="labels")(mod.OutputBias)  # again after an unregister
    yield mod.OutputBias
    methods.unregister(mod.NAME)


def test_a_test_only_method_runs_through_bench_verify_and_report(toy_method, tmp_path):
    from modelseal import bench

    text = """
name = "toy"
data = "digits"
seeds = [0]
[owner]
arch = "mlp"
epochs = 3
[[protections]]
method = "test-output-bias"
params = { shift = 30.0, null = 0.5 }
[[attacks]]
name = "prune"
params = { amount = 0.3 }
[negatives]
count = 2
archs = ["mlp", "cnn"]
epochs = 2
"""
    sc = bench.parse(text, "toy")
    summary = bench.run(sc, tmp_path / "run", progress=False)
    assert summary["errors"] == 0 and summary["finished"] == len(sc.cells) == 2
    from modelseal.bench.store import Store

    with Store(tmp_path / "run" / "results.sqlite") as st:
        cells = {c["attack"]: c for c in st.cells()}
        negs = st.negatives()
    assert cells["none"]["owned"] and cells["none"]["family"] == "watermark"
    assert len(negs) == 2 and not any(n["owned"] for n in negs)
    html = tmp_path / "report.html"
    bench.report(tmp_path / "run" / "results.sqlite", html)
    assert "test-output-bias" in html.read_text()
    # the report gives a Uniqueness Score only to a method that declares its score a match rate
    from modelseal.bench.report import method_summary

    with Store(tmp_path / "run" / "results.sqlite") as st:
        all_cells, all_negs = st.cells(), st.negatives()
    assert method_summary(all_cells, all_negs)[0]["uniqueness"] is None
    toy_method.score_is_match_rate = True
    try:
        robust = [c["score"] for c in all_cells if c["attack_name"] != "none"]
        assert method_summary(all_cells, all_negs)[0]["uniqueness"] == pytest.approx(
            sum(robust) / len(robust) - sum(n["score"] for n in all_negs) / len(all_negs))
    finally:
        del toy_method.score_is_match_rate

    # and verify from the API and the CLI, with the commitment written at protect time
    d = ms.data.load("digits", seed=0)
    owner = ms.models.build("mlp", d.meta, seed=0)
    done = methods.protect(toy_method(), owner, d.owner)
    assert ms.verify(done.models[0], done.key, commitment=done.commitment).owned
    assert not ms.verify(owner, done.key).owned
    ms.models.save_model(done.models[0], tmp_path / "m.safetensors")
    done.key.save(tmp_path / "k.seal")
    r = CliRunner().invoke(app, ["verify", str(tmp_path / "k.seal"), str(tmp_path / "m.safetensors"), "--json"])
    assert r.exit_code == 0 and '"owned": true' in r.output, r.output
