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
