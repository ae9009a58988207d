"""The arena's siblings of a public base (issue 37 item 4) and its "stolen through the API" threat row (issue 38
item 5): `[negatives] siblings = N` in a scenario, the sibling rows in the store, the report's columns with and
without siblings, and the measured fact that TAFA and the lineage test accuse siblings."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from modelseal.bench import outcomes, scenario
from modelseal.bench.store import Store
from modelseal.cli import app

SIBS = """
name = "arena-siblings"
data = "digits"
seeds = [0]
[owner]
arch = "mlp"
epochs = 3
[[protections]]
method = "trigger-set"
params = { n = 20, extra_epochs = 1 }
[[protections]]
method = "tafa"
params = { n = 60, steps = 6, permutations = 200 }
[[protections]]
method = "lineage"
params = { permutations = 2000 }
[[protections]]
method = "ipguard"
[[attacks]]
name = "prune"
params = { amount = 0.5 }
[[attacks]]
name = "knockoff"
params = { queries = 300, epochs = 3 }
[negatives]
count = 2
archs = ["mlp", "cnn"]
epochs = 6
siblings = 2
base_epochs = 6
"""


def test_siblings_are_fine_tunes_of_one_public_base_and_the_owner_is_one_too():
    sc = scenario.parse(SIBS)
    base = sc.base_spec()
    assert sc.owner_spec()["base"] == base and base["seed"] == scenario.BASE_SEED and base["epochs"] == 6
    rel = sc.relative_specs()
    assert [r["kind"] for r in rel] == ["base", "sibling", "sibling"]
    assert [r["seed"] for r in rel[1:]] == [scenario.SIBLING_SEED, scenario.SIBLING_SEED + 1]
    assert all(r["base"] == base and r["epochs"] == 3 and r["arch"] == "mlp" for r in rel[1:])  # owner's epochs
    assert sc.negative_specs()[-3:] == rel and len(sc.negative_specs()) == 5
    assert scenario.parse(SIBS.replace("base_epochs = 6", "sibling_epochs = 2")).relative_specs()[1]["epochs"] == 2


def test_scenarios_without_siblings_keep_their_ids():
    """The built-in scenarios' cell, negative and owner ids are those of the code before siblings existed."""
    want = {"tiny": "eeeb6744d23e3989", "arena": "bdaa212b34050ac6", "demo": "e9b5aff3bf06f64b"}
    for name, digest in want.items():
        sc = scenario.load(name)
        assert "base" not in sc.owner_spec() and sc.relative_specs() == []
        ids = ([c.id for c in sc.cells] + ["neg-" + scenario.spec_digest(n) for n in sc.negative_specs()]
               + [scenario.spec_digest(sc.owner_spec())])
        assert hashlib.sha256(" ".join(ids).encode()).hexdigest()[:16] == digest, name


@pytest.mark.parametrize("old,new,msg", [
    ("siblings = 2", 'siblings = "2"', "key 'negatives.siblings': must be int"),
    ("siblings = 2", "siblings = -1", "key 'negatives.siblings'"),
    ("siblings = 2", "siblings = 1001", "key 'negatives.siblings'"),
    ("base_epochs = 6", "base_epochs = 0", "key 'negatives.base_epochs'"),
    ("base_epochs = 6", "sibling_epochs = true", "key 'negatives.sibling_epochs': must be int"),
    ("siblings = 2", "siblings = 0", "key 'negatives.base_epochs': needs siblings = N"),
    ("siblings = 2", "sibling = 2", "key 'negatives.sibling': unknown key"),
])
def test_bad_sibling_keys_are_refused_in_one_line_with_the_key(old, new, msg):
    with pytest.raises(scenario.ScenarioError) as e:
        scenario.parse(SIBS.replace(old, new), "s.toml")
    text = str(e.value)
    assert "\n" not in text and text.startswith("s.toml, line ") and msg in text, text


@pytest.fixture(scope="module")
def sib_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("siblings") / "run"
    toml = out.parent / "siblings.toml"
    toml.write_text(SIBS)
    res = CliRunner().invoke(app, ["bench", "arena", str(toml), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout[res.stdout.index("{"):])


def test_sibling_rows_are_stored_with_their_kind(sib_run):
    out, _ = sib_run
    with Store(out / "results.sqlite") as s:
        negs, arts = s.negatives(), s.artifacts()
    kinds = {(n["protection"], n["kind"]) for n in negs}
    for prot in ("trigger-set", "tafa", "lineage", "ipguard"):
        got = sorted(n["kind"] for n in negs if n["protection"] == prot)
        assert got == ["base", "independent", "independent", "sibling", "sibling"], (prot, kinds)
    (base,) = [a for a in arts if a["kind"] == "base"]
    (owner,) = [a for a in arts if a["kind"] == "owner"]
    assert owner["info"]["spec"]["base"] == {k: v for k, v in base["info"]["spec"].items() if k != "label"}
    sibs = [a for a in arts if a["kind"] == "negative" and a["info"]["spec"].get("kind") == "sibling"]
    assert len(sibs) == 2 and all(a["info"]["accuracy"] > 0.6 for a in sibs + [base, owner])


def test_arena_gives_fpr_with_and_without_siblings_and_shows_who_accuses_them(sib_run):
    _, payload = sib_run
    rows = {r["protection"]: r for r in payload["arena"]}
    for r in rows.values():
        assert r["negatives"] == 2 and r["negatives_with_siblings"] == 5 and r["siblings"] == 2
        assert r["realised_fpr"] == 0.0  # no independent model is accused by any method here
        assert r["realised_fpr_with_siblings"] == pytest.approx(
            (r["siblings_accused"] + bool(r["base_owned"])) / 5)
    # measured (issue 37): the keyless lineage test owns every sibling and the public base itself; TAFA accuses
    # siblings too; the trigger set, embedded after the fine-tune, accuses none
    assert rows["lineage"]["siblings_accused"] == 2 and rows["lineage"]["base_owned"]
    assert rows["tafa"]["siblings_accused"] >= 1 and rows["tafa"]["realised_fpr_with_siblings"] > 0
    assert rows["trigger-set"]["siblings_accused"] == 0 and rows["trigger-set"]["base_owned"] is False
    assert rows["lineage"]["auc_with_siblings"] < rows["lineage"]["auc"]


def test_report_shows_the_sibling_columns_and_the_threat_rows(sib_run):
    out, payload = sib_run
    html = (out / "report.html").read_text()
    headline = html.split("<section id='headline'>")[1].split("</section>")[0]
    assert "id='threat-table'" in headline and outcomes.API_THREAT in headline
    assert outcomes.RELATIVE_THREAT in headline and "accused 2 of 2 siblings" in headline
    assert "the public base OWNED" in headline
    arena = html.split("<section id='arena'>")[1].split("</section>")[0]
    assert "id='siblings-table'" in arena and "realised FPR with siblings" in arena
    assert "realised FPR without siblings" in arena
    threats = {t["threat"]: t for t in payload["threats"]}
    api = threats[outcomes.API_THREAT]["by_protection"]
    assert set(api) == {"trigger-set", "tafa", "lineage", "ipguard"}
    assert all(v["total"] == 1 and v["text"].startswith(f"found {v['found']} of 1: knockoff") for v in api.values())
    rel = threats[outcomes.RELATIVE_THREAT]["by_protection"]
    assert rel["lineage"]["found"] == 2 and rel["lineage"]["base_owned"]
    # the headline's "independent models accused" counts independent models only
    surv = {r["protection"]: r for r in outcomes.survival_from_db(out / "results.sqlite")}
    assert surv["lineage"]["false_positives"] == "0 of 2"


def _cell(attack_name, params=None, owned=False, p=0.5):
    return {"protection": "wm", "method": "trigger-set", "family": "watermark", "status": "ok",
            "attack": attack_name, "attack_name": attack_name, "attack_params": params or {}, "swept": None,
            "strength": None, "seed": 0, "owner_acc": 0.9, "attacked_acc": 0.88, "owned": owned, "p_value": p,
            "detail": {}}


def test_the_api_row_counts_extraction_cells_and_chains_with_an_extraction_step():
    from modelseal import attacks

    steal = attacks.STUDENT
    chain = {"steps": [{"attack": "prune", "params": {}}, {"attack": steal, "params": {"queries": 10}}]}
    cells = [_cell("none", owned=True, p=1e-9), _cell("prune", owned=True, p=1e-9),
             _cell(steal, {"queries": 300}, owned=True, p=1e-8), _cell(attacks.CHAIN, chain, p=0.3)]
    assert [outcomes.is_extraction(c) for c in cells] == [False, False, True, True]
    (api,) = outcomes.threats(cells, [])  # no relatives: no relative row
    row = api["by_protection"]["wm"]
    assert api["threat"] == outcomes.API_THREAT and (row["found"], row["total"]) == (1, 2)
    assert "missed (p 0.3; accuracy 0.880, owner 0.900)" in row["text"]
    none = outcomes.threats(cells[:2], [])[0]["by_protection"]["wm"]
    assert none["text"] == "no extraction attack in this run"
