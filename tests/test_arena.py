"""The arena (modelseal.bench.arena): ROC / AUC / TPR at fixed FPR over populations of derived and independent
models, the negatives' data splits and extracted students, the CLI and the report section."""

from __future__ import annotations

import json

import pytest
from sklearn.metrics import roc_auc_score, roc_curve
from typer.testing import CliRunner

from modelseal.bench import arena as arena_mod
from modelseal.bench import driver, jobs, scenario
from modelseal.bench.store import Store
from modelseal.cli import app


def _cell(score, owned=False, acc=0.9, attack="prune", prot="fp", method="tafa", family="fingerprint"):
    return {"protection": prot, "method": method, "family": family, "status": "ok", "attack": attack,
            "attack_name": attack, "attack_params": {}, "swept": None, "strength": None, "seed": 0,
            "owner_acc": 0.9, "protected_acc": 0.9, "attacked_acc": acc, "owned": owned, "score": score,
            "p_value": 0.5, "alpha": 1e-6, "queries": 10, "detail": {}, "cost": None, "attack_wall_s": 0.0,
            "removed": False, "wall_s": 0.0}


def _neg(score, owned=False, prot="fp", method="tafa", family="fingerprint"):
    return {"protection": prot, "method": method, "family": family, "status": "ok", "negative": "mlp#0",
            "owned": owned, "score": score, "p_value": 0.5, "alpha": 1e-6, "queries": 10, "detail": {}}


def test_roc_numbers_equal_a_hand_computation_and_sklearn():
    pos, neg = [0.9, 0.8, 0.4], [0.5, 0.3, 0.2, 0.1]
    cells = [_cell(s, owned=(s > 0.85), attack=f"a{i}") for i, s in enumerate(pos)]
    negs = [_neg(s) for s in neg]
    (row,) = arena_mod.arena(cells, negs)
    # by hand: 11 of the 12 (positive, negative) pairs are ordered right (0.4 < 0.5)
    assert row["auc"] == pytest.approx(11 / 12)
    assert row["auc"] == pytest.approx(roc_auc_score([1] * 3 + [0] * 4, pos + neg))
    # a threshold above every negative finds 0.9 and 0.8; FPR 1/4 is needed to find 0.4
    assert row["tpr_at_0.01"] == pytest.approx(2 / 3) and row["tpr_at_0.001"] == pytest.approx(2 / 3)
    fpr, tpr, _ = roc_curve([1] * 3 + [0] * 4, pos + neg, drop_intermediate=False)
    assert row["fpr"] == pytest.approx(list(fpr)) and row["tpr"] == pytest.approx(list(tpr))
    assert arena_mod.roc(pos, neg)["tpr_at_0.01"] == max(t for f, t in zip(fpr, tpr, strict=True) if f <= 0.01)
    assert row["tpr_at_alpha"] == pytest.approx(1 / 3) and row["realised_fpr"] == 0.0
    assert row["fpr_resolution"] == 0.25 and row["positives"] == 3 and row["negatives"] == 4


def test_damaged_positives_are_left_out_and_unjudgeable_models_rank_lowest():
    cells = [_cell(0.9), _cell(0.95, acc=0.5, attack="wreck"),  # 40 points below the owner: left out
             {**_cell(None, attack="distill"), "detail": {"not_applicable": "another architecture"}}]
    negs = [_neg(0.2), _neg(None), _neg(0.1)]
    (row,) = arena_mod.arena(cells, negs)
    assert row["positives"] == 2 and row["damaged"] == 1 and row["negatives"] == 3
    assert row["not_applicable"] == 2
    # the unjudgeable positive ties the unjudgeable negative below every scored model
    assert row["auc"] == pytest.approx(roc_auc_score([1, 1, 0, 0, 0], [0.9, -0.9, 0.2, -0.9, 0.1]))
    assert row["tpr_at_0.01"] == 0.5


def test_locks_are_not_in_the_arena_and_baselines_are_marked():
    cells = [_cell(0.3, family="lock", method="advparams", prot="lock"), _cell(0.8, method="akh", prot="akh")]
    rows = arena_mod.arena(cells, [_neg(0.1, method="akh", prot="akh")])
    assert [r["protection"] for r in rows] == ["akh"] and rows[0]["peer_baseline"]


SMALL = """
name = "arena-small"
data = "digits"
seeds = [0]
[owner]
arch = "mlp"
epochs = 4
[[protections]]
method = "tafa"
params = { n = 40, steps = 6, permutations = 200 }
[[protections]]
method = "akh"
[[protections]]
method = "ipguard"
[[protections]]
method = "modeldiff"
[[protections]]
method = "sac"
[[protections]]
method = "lineage"
params = { permutations = 2000 }
[[attacks]]
name = "finetune"
params = { mode = "ftal", epochs = 1 }
[[attacks]]
name = "prune"
params = { amount = [0.3, 0.6] }
[[attacks]]
name = "knockoff"
params = { queries = 300, epochs = 3 }
[negatives]
count = 3
archs = ["mlp", "cnn"]
epochs = 4
data_seeds = [0, 1]
students = 1
student_attack = { attack = "knockoff", params = { queries = 300, epochs = 3 } }
"""


def test_negatives_cycle_data_splits_and_add_students_of_independent_models():
    sc = scenario.parse(SMALL)
    specs = sc.negative_specs()
    assert [s["data_seed"] for s in specs] == [0, 1, 0, 0]
    assert [s["arch"] for s in specs[:3]] == ["mlp", "cnn", "mlp"]
    student = specs[3]
    assert student["teacher"]["seed"] == specs[0]["seed"] and student["extract"]["attack"] == "knockoff"
    assert student["label"].startswith("student-of-mlp#0") and student["seed"] == 3000
    # the defaults add nothing: a scenario without the new keys keeps the specs (and ids) of older runs
    plain = scenario.parse(SMALL.replace("data_seeds = [0, 1]\nstudents = 1\n", "").replace(
        'student_attack = { attack = "knockoff", params = { queries = 300, epochs = 3 } }\n', ""))
    assert all(set(s) == {"data", "data_seed", "arch", "epochs", "lr", "batch_size", "seed", "label"}
               for s in plain.negative_specs())


@pytest.mark.parametrize("edit,msg", [
    ('student_attack = { attack = "finetune" }', "not an extraction attack"),
    ('student_attack = { attack = "knockoff", params = { queries = [1, 2] } }', "single values"),
    ('student_attack = { attack = "knockoff", params = { nope = 1 } }', "no parameter 'nope'"),
    ("student_attack = 3", "must be dict"),
])
def test_bad_student_attacks_are_refused_with_the_key(edit, msg):
    text = SMALL.replace('student_attack = { attack = "knockoff", params = { queries = 300, epochs = 3 } }', edit)
    with pytest.raises(scenario.ScenarioError, match=msg):
        scenario.parse(text)


@pytest.mark.parametrize("edit,msg", [
    ("data_seeds = [0, 1]", "data_seeds = []"), ("data_seeds = [0, 1]", 'data_seeds = ["a"]'),
    ("count = 3", "count = 0"), ("students = 1", "students = -1")])
def test_bad_negative_keys_are_refused(edit, msg):
    with pytest.raises(scenario.ScenarioError, match="negatives"):
        scenario.parse(SMALL.replace(edit, msg))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("arena") / "run"
    toml = out.parent / "small.toml"
    toml.write_text(SMALL)
    res = CliRunner().invoke(app, ["bench", "arena", str(toml), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout[res.stdout.index("{"):]), toml


def test_cli_arena_runs_and_its_numbers_are_those_of_the_database(small_run):
    out, payload, _ = small_run
    rows = {r["protection"]: r for r in payload["arena"]}
    # every peer baseline runs through protect -> score -> arena and report like the protections
    assert set(rows) == {"tafa", "akh", "ipguard", "modeldiff", "sac", "lineage"}
    assert all(rows[b]["peer_baseline"] and rows[b]["score_only"] for b in ("akh", "ipguard", "modeldiff", "sac"))
    assert not rows["tafa"]["peer_baseline"]
    with Store(out / "results.sqlite") as s:
        cells, negs = s.cells(), s.negatives()
    assert {n["negative"] for n in negs} >= {"student-of-mlp#0@split0#0", "cnn#1@split1"}
    for prot, r in rows.items():
        pos = [c for c in cells if c["protection"] == prot and c["status"] == "ok"
               and c["attacked_acc"] >= c["owner_acc"] - 0.05]
        neg = [n for n in negs if n["protection"] == prot and n["status"] == "ok"]
        assert r["positives"] == len(pos) and r["negatives"] == len(neg) == 4
        if prot == "lineage":  # keyless: every weight-derived copy (the knockoff student is not) at 1e-6
            assert {c["attack_name"] for c in pos if c["owned"]} == {"none", "finetune", "prune"}
            assert not any(n["owned"] for n in neg)
        assert r["auc"] == pytest.approx(roc_auc_score([1] * len(pos) + [0] * len(neg),
                                                       [c["score"] for c in pos] + [n["score"] for n in neg]))
    assert rows["akh"]["score_only"] and rows["akh"]["tpr_at_alpha"] == 0.0
    assert all(rows[b]["auc"] is not None for b in rows)
    html = (out / "report.html").read_text()
    assert "id='arena'" in html and "id='arena-table'" in html and "ROC curves" in html


def test_cli_arena_refuses_to_overwrite_a_report_before_running(small_run, tmp_path):
    _, _, toml = small_run
    report = tmp_path / "r.html"
    report.write_text("mine")
    res = CliRunner().invoke(app, ["bench", "arena", str(toml), "--out", str(tmp_path / "run"),
                                   "--report", str(report)])
    assert res.exit_code == 2 and "--force" in res.output and report.read_text() == "mine"
    assert not (tmp_path / "run").exists()


def test_attacks_shared_by_fingerprints_give_the_rows_they_give_without_the_cache(small_run, tmp_path,
                                                                                     monkeypatch):
    out, _, toml = small_run
    monkeypatch.setattr(jobs, "_ATTACKED_MAX", 0)  # every attack runs again for every protection
    jobs._ATTACKED.clear()
    driver.run(scenario.load(toml), tmp_path / "nocache")
    assert driver.rows_for_comparison(out / "results.sqlite") == \
        driver.rows_for_comparison(tmp_path / "nocache" / "results.sqlite")


def test_a_method_that_judges_some_models_is_not_score_only():
    judged = [_cell(0.9, owned=True), _cell(0.8, owned=True, attack="ftal")]
    unjudged = {**_neg(0.0), "detail": {"not_judged": "another architecture"}}
    (row,) = arena_mod.arena(judged, [_neg(0.1), unjudged])
    assert not row["score_only"] and row["tpr_at_alpha"] == 1.0
    nothing = [{**_cell(0.5), "detail": {"not_judged": "no references"}}]
    (row,) = arena_mod.arena(nothing, [unjudged])
    assert row["score_only"]


def test_cli_arena_takes_only_seed_and_max_cells_like_bench_run(small_run, tmp_path):
    """`bench arena --only tafa --seed 1 --max-cells 1`: one protection, one seed, and a partial run whose
    report covers what finished (issue 40: the arena lacked the options `bench run` has)."""
    _, _, toml = small_run
    res = CliRunner().invoke(app, ["bench", "arena", str(toml), "--out", str(tmp_path / "run"), "--only", "tafa",
                                   "--seed", "1", "--max-cells", "1", "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout[res.stdout.index("{"):])
    assert payload["run"]["ran"] == 1 and payload["run"]["partial"]
    with Store(tmp_path / "run" / "results.sqlite") as s:
        cells = s.cells()
    assert {c["protection"] for c in cells} == {"tafa"} and {c["seed"] for c in cells} == {1}
    bad = CliRunner().invoke(app, ["bench", "arena", str(toml), "--out", str(tmp_path / "run2"), "--only", "nope"])
    assert bad.exit_code == 2 and "no protection uses nope" in bad.output
