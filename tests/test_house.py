"""A new method and a new attack are each one file with one declared schema (tests/toy_method.py,
tests/toy_attack.py): once imported they appear in `modelseal methods`, run through `bench run`, `verify` and
the report with no other change to modelseal."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import modelseal as ms
from modelseal import attacks, methods, schema
from modelseal.cli import app

runner = CliRunner()


@pytest.fixture
def toys():
    import toy_attack
    import toy_method

    methods.register(toy_method.NAME, family="watermark", access="labels")(toy_method.OutputBias)
    attacks.register(toy_attack.NAME)(toy_attack.ScaleHead)
    yield toy_method, toy_attack
    methods.unregister(toy_method.NAME)
    attacks.unregister(toy_attack.NAME)


def test_a_toy_method_and_attack_join_every_consumer(toys, tmp_path):
    toy_method, toy_attack = toys
    listed = json.loads(runner.invoke(app, ["methods", "--json"]).stdout)
    assert toy_method.NAME in listed["methods"] and toy_attack.NAME in listed["attacks"]
    for name, kind in ((toy_method.NAME, "method"), (toy_attack.NAME, "attack")):
        r = runner.invoke(app, ["methods", name, "--json"])
        assert r.exit_code == 0, r.output
        got = json.loads(r.stdout)
        assert got["kind"] == kind and all(p["meaning"] and p["range"] for p in got["params"])
    m = json.loads(runner.invoke(app, ["methods", toy_method.NAME, "--json"]).stdout)
    assert {p["name"] for p in m["verifier_params"]} == {"alpha", "null"}
    assert {p["name"]: p["range"] for p in m["params"]}["shift"] == "[0, 1000]"
    assert schema.incomplete(schema.of(toy_method.OutputBias)["params"]) == []

    from modelseal import bench
    from modelseal.bench.store import Store

    sc = bench.parse(f"""
name = "toys"
data = "digits"
seeds = [0]
[owner]
arch = "mlp"
epochs = 3
[[protections]]
method = "{toy_method.NAME}"
params = {{ shift = 30.0, null = 0.5 }}
[[attacks]]
name = "{toy_attack.NAME}"
params = {{ factor = [0.5, 3.0] }}
[negatives]
count = 2
archs = ["mlp", "cnn"]
epochs = 2
""", "toys")
    assert len(sc.cells) == 3
    summary = bench.run(sc, tmp_path / "run", progress=False)
    assert summary["errors"] == 0 and summary["finished"] == 3
    with Store(tmp_path / "run" / "results.sqlite") as st:
        cells = st.cells()
        negs = st.negatives()
    scaled = [c for c in cells if c["attack_name"] != "none"]
    assert len(scaled) == 2 and all(c["owned"] for c in scaled)  # scaling the head keeps the bias's argmax
    assert not any(n["owned"] for n in negs)
    html = tmp_path / "report.html"
    bench.report(tmp_path / "run" / "results.sqlite", html)
    text = html.read_text()
    assert toy_method.NAME in text and toy_attack.NAME in text

    # a scenario value outside the toy's declared range is refused before anything runs
    with pytest.raises(ms.errors.ModelSealError, match="factor must be a number in \\(0, 100\\]"):
        bench.parse(f'name = "t"\ndata = "digits"\n[owner]\narch = "mlp"\nepochs = 1\n[[protections]]\n'
                    f'method = "{toy_method.NAME}"\n[[attacks]]\nname = "{toy_attack.NAME}"\n'
                    'params = { factor = 0 }\n', "t")

    # verify from the API and the CLI, the verifier's parameter from --set
    d = ms.data.load("digits", seed=0)
    owner = ms.models.build("mlp", d.meta, seed=0)
    done = methods.protect(toy_method.OutputBias(), owner, d.owner)
    assert ms.verify(done.models[0], done.key, commitment=done.commitment).owned
    assert not ms.verify(owner, done.key).owned
    attacked = attacks.get(toy_attack.NAME)(factor=2.0).apply(done.models[0])
    assert ms.verify(attacked, done.key).owned
    ms.models.save_model(done.models[0], tmp_path / "m.safetensors")
    done.key.save(tmp_path / "k.seal")
    r = runner.invoke(app, ["verify", str(tmp_path / "k.seal"), str(tmp_path / "m.safetensors"), "--set", "null=0.4",
                            "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["owned"] is True
    r = runner.invoke(app, ["verify", str(tmp_path / "k.seal"), str(tmp_path / "m.safetensors"), "--set", "null=2"])
    assert r.exit_code == 2 and "null must be a number in (0, 1)" in r.output


CONSUMERS = ["cli.py", "demo.py", "verdict.py", "bench"]


def _logic_strings(tree):
    """String constants that take part in the program's logic: not docstrings, help texts, examples, messages
    (f-strings), command names (`name=`) or a class's own registration (`register("name")`)."""
    import ast

    skip = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(body[0].value, ast.Constant):
            skip.add(id(body[0].value))
        if isinstance(node, ast.keyword) and node.arg in ("help", "epilog", "meaning", "metavar", "name"):
            skip.update(id(s) for s in ast.walk(node.value))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("_examples", "register"):
            skip.update(id(s) for s in ast.walk(node))
        if isinstance(node, ast.JoinedStr):
            skip.update(id(s) for s in ast.walk(node))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]


def test_no_consumer_spells_a_method_or_an_attack_name():
    """The CLI, the bench, the demo and the verdict reach methods and attacks through the registries and the
    families (`methods.default(family)`, `attacks.CHAIN`, a per-user method's `collusion_bound`), never by a
    name written into their logic."""
    import ast
    from pathlib import Path

    import modelseal

    root = Path(modelseal.__file__).parent
    files = [p for c in CONSUMERS for p in ([root / c] if c.endswith(".py") else sorted((root / c).glob("*.py")))]
    names = set(methods.names()) | set(attacks.names())
    assert {"trigger-set", "deepmarks", "finetune", "chain"} <= names and len(files) > 5
    found = [f"{p.relative_to(root)}:{line}: {value!r}" for p in files
             for line, value in _logic_strings(ast.parse(p.read_text())) if value in names]
    assert not found, "consumers that spell a method or attack name:\n" + "\n".join(found)


def test_the_name_scan_sees_a_name_written_into_logic():
    import ast

    tree = ast.parse('def f(m):\n    """trigger-set"""\n    if m == "trigger-set":\n        return help_("x", '
                     'help="tafa")\n    return f"{m} tafa"\n')
    assert _logic_strings(tree) == [(3, "trigger-set"), (4, "x")]


def test_protect_runs_every_family_by_method(tmp_path, monkeypatch):
    """`modelseal protect --method NAME` runs the protect verb of the method's family; each family's own
    command is the same thing for that family."""
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["train", "--data", "digits", "--arch", "mlp", "--epochs", "1", "--seed", "0",
                            "--out", "owner.safetensors"])
    assert r.exit_code == 0, r.output
    fp = runner.invoke(app, ["protect", "owner.safetensors", "--method", "tafa", "--set", "n=20", "--key", "fp.seal"])
    assert fp.exit_code == 0, fp.output
    assert ms.Key.load("fp.seal").method == "tafa"
    wm = runner.invoke(app, ["protect", "owner.safetensors", "--method", "trigger-set", "--set", "n=10",
                             "--out", "m.safetensors", "--key", "wm.seal"])
    assert wm.exit_code == 0, wm.output
    assert ms.Key.load("wm.seal").method == "trigger-set" and (tmp_path / "m.safetensors").exists()
    bad = runner.invoke(app, ["protect", "owner.safetensors", "--method", "tafa", "--out", "x.safetensors",
                              "--key", "fp2.seal"])
    assert bad.exit_code == 2 and "drop --out" in bad.output and not (tmp_path / "fp2.seal").exists()
    missing = runner.invoke(app, ["protect", "owner.safetensors", "--method", "trigger-set", "--key", "w2.seal"])
    assert missing.exit_code == 2 and "give it with --out" in missing.output
    unknown = runner.invoke(app, ["protect", "owner.safetensors", "--method", "nope", "--key", "n.seal"])
    assert unknown.exit_code == 2 and "unknown method 'nope'" in unknown.output


def test_each_family_has_a_registered_default():
    for family in methods.FAMILIES:
        assert methods.info(methods.default(family)).family == family
    with pytest.raises(ms.errors.ModelSealError):
        methods.default("nope")
