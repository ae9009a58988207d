"""The report answers "what survived?": one decision (`bench.outcomes`) for the HTML headline, the terminal and
the demo."""

from __future__ import annotations

import base64
import html
import importlib
import io
import re
import sqlite3
from pathlib import Path

import pytest

from modelseal.bench import outcomes
from modelseal.bench.outcomes import LOCK_HELD_MARGIN, cell_outcome, survival
from modelseal.bench.report import survival_table
from modelseal.bench.store import Store

report_mod = importlib.import_module("modelseal.bench.report")  # the package's `report` is the function

OWNER = 0.924


def _cell(prot: str, family: str, attack: str, params: dict, *, owned: bool, acc: float, p: float | None = None,
          strength: float | None = None, swept: str | None = None, **extra) -> dict:
    name = attack.split(" ")[0]
    return {"cell_id": f"{prot}/{attack}", "protection": prot, "method": extra.pop("method", prot), "family": family,
            "attack": attack, "attack_name": "none" if attack == "none" else extra.pop("attack_name", name),
            "attack_params": params, "swept": swept, "strength": strength, "seed": 0, "status": "ok",
            "owner_acc": OWNER, "protected_acc": OWNER - 0.004, "attacked_acc": acc, "owned": owned, "score": 0.5,
            "p_value": p, "queries": 40, "wall_s": 1.5, **extra}


def rows() -> tuple[list[dict], list[dict]]:
    """A run with every kind of outcome: a watermark removed by one attack and damaging another, a fingerprint
    never detected, DeepMarks collusion within and past the code's bound, a lock recovered and a lock held."""
    cells = [
        _cell("trigger-set", "watermark", "none", {}, owned=True, acc=OWNER - 0.004, p=1e-9),
        _cell("trigger-set", "watermark", "prune amount=0.3", {"amount": 0.3}, owned=True, acc=0.91, p=1e-8,
              strength=0.3, swept="amount", attack_name="prune"),
        _cell("trigger-set", "watermark", "prune amount=0.6", {"amount": 0.6}, owned=False, acc=0.90, p=0.2,
              strength=0.6, swept="amount", attack_name="prune"),
        _cell("trigger-set", "watermark", "finetune", {"mode": "rtal", "epochs": 2}, owned=False, acc=0.5, p=0.3),
        _cell("c-examples", "fingerprint", "none", {}, owned=False, acc=OWNER, p=0.01),
        _cell("c-examples", "fingerprint", "prune amount=0.3", {"amount": 0.3}, owned=False, acc=0.92, p=0.2,
              strength=0.3, swept="amount", attack_name="prune"),
        _cell("deepmarks", "per-user", "none", {}, owned=True, acc=0.92, p=1e-12, colluders=[3], accused=[3],
              colluders_found=1, innocents_accused=0, threshold=6.0, detail={"max_colluders": 2}),
        _cell("deepmarks", "per-user", "collude k=2", {"k": 2}, owned=True, acc=0.91, p=1e-8, colluders=[1, 4],
              accused=[1, 4], colluders_found=2, innocents_accused=0, strength=2, swept="k", threshold=6.0,
              attack_name="collude", detail={"max_colluders": 2}),
        _cell("deepmarks", "per-user", "collude k=3", {"k": 3}, owned=False, acc=0.91, p=0.4, colluders=[0, 2, 5],
              accused=[], colluders_found=0, innocents_accused=0, strength=3, swept="k", threshold=6.0,
              attack_name="collude", detail={"max_colluders": 2}),
        _cell("advparams", "lock", "none", {}, owned=True, acc=0.11, unlocked_acc=OWNER),
        _cell("advparams", "lock", "recover-finetune", {"mode": "ftal", "epochs": 1, "fraction": 0.1}, owned=True,
              acc=0.725, unlocked_acc=OWNER, attack_name="finetune"),
        _cell("advparams", "lock", "reset-outliers", {"z": 3.0}, owned=True, acc=0.12, unlocked_acc=OWNER),
    ]
    for c in cells:
        if c["family"] == "lock":
            c["protected_acc"], c["p_value"], c["queries"] = 0.11, None, 0
    negatives = [
        {"neg_id": f"n-{p}-{i}", "protection": p, "method": p, "family": fam, "seed": 0, "negative": f"cnn#{i}",
         "arch": "cnn", "accuracy": 0.9, "status": "ok", "owned": False, "score": 0.1, "p_value": pv, "queries": 40,
         "accused": [] if fam == "per-user" else None, "innocents_accused": 0 if fam == "per-user" else None,
         "detail": {}, "wall_s": 1.0}
        for p, fam in [("trigger-set", "watermark"), ("c-examples", "fingerprint"), ("deepmarks", "per-user")]
        for i, pv in enumerate([0.125, 0.125, 0.6])]
    return cells, negatives


def make_db(path: Path) -> Path:
    cells, negatives = rows()
    with Store(path) as s:
        s.set_meta("scenario_name", "fabricated")
        s.set_meta("data", "mnist5k")
        for c in cells:
            s.put_cell(c)
        for n in negatives:
            s.put_negative(n)
    return path


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return make_db(tmp_path_factory.mktemp("report") / "results.sqlite")


@pytest.fixture(scope="module")
def html_text(db, tmp_path_factory) -> str:
    """The report of the fabricated run, rendered once for the tests that read it."""
    return report_mod.report(db, tmp_path_factory.mktemp("html") / "report.html").read_text()


def _by_prot(rs: list[dict]) -> dict[str, dict]:
    return {r["protection"]: r for r in rs}


def test_survival_in_plain_words():
    cells, negatives = rows()
    s = _by_prot(survival(cells, negatives))
    wm = s["trigger-set"]
    assert wm["status"] == "removed" and wm["verdict"] == ("removed by 1 of 3 attacks; 1 more left it undetected but "
                                                           "cost the model more than 5 points of accuracy")
    assert wm["removed_by"] == ["prune (amount=0.6)"]  # rtal cost 42 points of accuracy: not a removal
    assert any(x.startswith("finetune (mode=rtal, epochs=2)") and "damaged" in x for x in wm["survived"])
    assert wm["alpha"] == pytest.approx(1e-6) and wm["false_positives"] == "0 of 3"
    assert wm["accuracy_cost_text"] == "0.4 points lost (0.924 -> 0.920)"
    # never detected unattacked: nothing to remove, so its attacks are not called removals
    ce = s["c-examples"]
    assert ce["status"] == "never" and ce["removed_by"] == [] and ce["verdict"].startswith("never detected")
    # collusion within the bound is traced; past the bound it is labelled so and does not make it "removed"
    dm = s["deepmarks"]
    assert dm["status"] == "survived" and dm["verdict"].startswith("survived every attack within its guarantee")
    assert dm["removed_by"] == ["collude (k=3) [3 colluders: past the code's bound of 2]"]
    # without the bound in the verdict's details it comes from the key (k - 1 for a BIBD code with blocks of k)
    bare = [{**c, "detail": {}} for c in cells]
    assert _by_prot(survival(bare, negatives, keys={"deepmarks": {"k": 3}}))["deepmarks"]["status"] == "survived"
    assert _by_prot(survival(bare, negatives))["deepmarks"]["status"] == "removed"  # bound unknown: no excuse
    # a lock the thief brought back to 0.725 (owner 0.924) did not hold; one left at 0.12 did
    lk = s["advparams"]
    assert lk["status"] == "removed" and lk["verdict"] == "recovered by 1 of 2 attacks"
    assert lk["removed_by"][0].startswith("recover-finetune (mode=ftal, epochs=1, fraction=0.1)")
    assert lk["survived"] == ["reset-outliers (z=3.0) [held]"] and lk["alpha"] is None


def test_removed_only_when_the_unattacked_model_was_detected():
    cells, _ = rows()
    pruned = next(c for c in cells if c["protection"] == "trigger-set" and c["strength"] == 0.6)
    assert cell_outcome(pruned, baseline_detected=True)["word"] == "REMOVED"
    assert cell_outcome(pruned, baseline_detected=False)["word"] == "never detected"
    lock = {**cells[-2], "attacked_acc": OWNER - LOCK_HELD_MARGIN}
    assert cell_outcome(lock, True)["word"] == "held"
    assert cell_outcome({**lock, "attacked_acc": OWNER - LOCK_HELD_MARGIN + 0.01}, True)["word"] == "RECOVERED"


def test_terminal_and_html_say_the_same(db, html_text):
    from rich.console import Console

    text = html_text
    for sec in report_mod.SECTIONS:
        assert f"id='{sec}'" in text, sec
    assert text.index("id='headline'") < text.index("id='summary'") < text.index("id='plot-scores'")
    headline = text.split("<section id='headline'>")[1].split("</section>")[0]
    console = Console(record=True, width=600)  # one line per cell: 7 columns
    rs = outcomes.survival_from_db(db)
    console.print(survival_table(rs))
    terminal = console.export_text()
    for r in rs:
        for phrase in [r["verdict"], *r["removed_by"]]:
            assert phrase in terminal, phrase
            assert phrase.replace("'", "&#x27;") in headline, phrase
    assert "1e-06" in headline and "1e-06" in terminal
    # the per-method table prints whole query counts and accuracy differences in points
    methods = text.split("<section id='methods'>")[1].split("</section>")[0]
    assert ">40<" in methods and "40.000" not in methods and "points" in methods
    assert "colluders found" in methods and "3 of 6 in 3 cells" in methods  # the unattacked copy counts: 1 leaker


def test_plots_are_wide_and_every_cell_has_its_attack_parameters(html_text):
    import matplotlib.image as mpimg

    text = html_text
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(images) == 4  # accuracy and p-value per attack, p-value scatter, the arena's ROC curves
    for b in images:
        img = mpimg.imread(io.BytesIO(base64.b64decode(b)), format="png")
        assert img.shape[1] >= 900
    cells = text.split("<section id='cells'>")[1].split("</section>")[0]
    assert "finetune (epochs=2, mode=rtal)" in cells and "collude (k=3)" in cells
    # the unattacked protected model is each group's first row
    order = re.findall(r"<tr><td class='l'>(trigger-set|advparams)</td><td class='(?:l|w)'>([^<]*)</td>", cells)
    assert order[0] == ("advparams", "no attack") and ("trigger-set", "no attack") in order
    assert order.index(("trigger-set", "no attack")) == min(i for i, o in enumerate(order) if o[0] == "trigger-set")


def test_an_old_database_without_alpha_still_reports(tmp_path):
    old = tmp_path / "old.sqlite"
    con = sqlite3.connect(old)
    from modelseal.bench import store

    cols = [c for c in store.CELL_COLUMNS if c != "alpha"]
    con.execute(f"CREATE TABLE cells ({', '.join(c + (' TEXT PRIMARY KEY' if c == 'cell_id' else '') for c in cols)})")
    con.execute("INSERT INTO cells (cell_id, protection, method, family, attack, attack_name, status, owned, p_value) "
                "VALUES ('x', 'tafa', 'tafa', 'fingerprint', 'none', 'none', 'ok', 1, 1e-9)")
    con.commit()
    con.close()
    with Store(old) as s:
        (cell,) = s.cells()
        assert cell["alpha"] is None
        s.put_cell({**cell, "cell_id": "y", "alpha": 1e-3})
        assert sorted(c["alpha"] or 0 for c in s.cells()) == [0, 1e-3]
    rs = outcomes.survival_from_db(old)
    assert rs[0]["alpha"] == [1e-6, 1e-3]  # the default for the old row, the recorded one for the new


def test_bench_report_command_prints_the_headline(db, tmp_path):
    import json

    from typer.testing import CliRunner

    from modelseal.cli import app

    r = CliRunner().invoke(app, ["bench", "report", str(db), "--out", str(tmp_path / "r.html"), "--json"])
    assert r.exit_code == 0, r.output
    payload = json.loads(r.stdout)
    assert payload["survival"] == outcomes.survival_from_db(db)
    human = CliRunner().invoke(app, ["bench", "report", str(db), "--out", str(tmp_path / "r.html"), "--force"])
    assert human.exit_code == 0 and "What survived?" in human.output and "recovered" in human.output  # 80 columns


# ------------------------------------------------------------------ issue 26, item 13: headline cells
def _raw_rows(db: Path) -> tuple[list[dict], list[dict]]:
    """The database rows read with sqlite3 alone (not through Store or the report), JSON columns decoded."""
    import json

    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        cells = [dict(r) for r in con.execute("SELECT * FROM cells")]
        negs = [dict(r) for r in con.execute("SELECT * FROM negatives")]
    finally:
        con.close()
    for r in cells + negs:
        for k, v in r.items():
            if isinstance(v, str) and v[:1] in "[{":
                r[k] = json.loads(v)
    return cells, negs


def _expected_headline(cells: list[dict], negs: list[dict]) -> dict[str, dict]:
    """Every headline cell recomputed from the raw rows with the rules written in the report's docstring."""
    out = {}
    for prot in sorted({c["protection"] for c in cells}):
        cs = [c for c in cells if c["protection"] == prot and c["status"] == "ok"]
        fam = cs[0]["family"]
        owner = sum(c["owner_acc"] for c in cs) / len(cs)
        prot_acc = sum(c["protected_acc"] for c in cs) / len(cs)
        base = next(c for c in cs if c["attack_name"] == "none")
        attacked = [c for c in cs if c["attack_name"] != "none"]
        bound = (base.get("detail") or {}).get("max_colluders") if fam == "per-user" else None
        removed = past = damaged = held = 0
        for c in attacked:
            if fam == "lock":
                held += c["attacked_acc"] <= c["owner_acc"] - LOCK_HELD_MARGIN
                continue
            if c["owned"] or not base["owned"]:
                continue
            if c["attacked_acc"] < c["owner_acc"] - 0.05:
                damaged += 1
            elif bound is not None and len(c.get("colluders") or []) > bound:
                past += 1
            else:
                removed += 1
        n = len(attacked)
        ns = [x for x in negs if x["protection"] == prot and x["status"] == "ok"]
        out[prot] = {"n": n, "removed": removed, "past": past, "damaged": damaged, "held": held,
                     "never": fam != "lock" and not base["owned"], "owner": owner, "protected": prot_acc,
                     "fp": None if fam == "lock" else f"{sum(bool(x['owned']) for x in ns)} of {len(ns)}"}
    return out


def test_every_headline_cell_recomputed_from_the_database(db, html_text):
    """Each number and word of the headline follows from the rows: the counts in the verdict equal the attacks
    listed, an accuracy that rose is never called a cost, "survived all" never hides an undetected model, and
    the terminal prints the very same words as the HTML."""
    from rich.console import Console

    want = _expected_headline(*_raw_rows(db))
    rows_ = _by_prot(outcomes.survival_from_db(db))
    headline = html_text.split("<section id='headline'>")[1].split("</section>")[0]
    console = Console(record=True, width=600)
    console.print(survival_table(list(rows_.values())))
    terminal = console.export_text()
    for prot, w in want.items():
        r = rows_[prot]
        if r["family"] == "lock":
            removed_n = w["n"] - w["held"]
            assert r["verdict"] == f"recovered by {removed_n} of {w['n']} attacks"
            assert len(r["removed_by"]) == removed_n
        elif w["never"]:
            assert r["verdict"].startswith("never detected") and r["removed_by"] == []
        else:
            assert len(r["removed_by"]) == w["removed"] + w["past"]  # the list holds what the words count
            if w["removed"]:
                assert r["verdict"].startswith(f"removed by {w['removed']} of {w['n']} attacks")
                assert (f"and by {w['past']} more past the code's bound" in r["verdict"]) == bool(w["past"])
            elif w["past"]:
                assert r["verdict"].startswith("survived every attack within its guarantee "
                                               f"({w['n'] - w['past']} of {w['n']})")
            else:
                assert r["verdict"].startswith(f"survived {w['n'] - w['damaged']} of {w['n']} attacks"
                                               if w["damaged"] else f"survived all {w['n']} attacks")
            assert (f"{w['damaged']} more left it undetected" in r["verdict"]) == bool(w["damaged"])
            assert not (w["damaged"] and "survived all" in r["verdict"])
            d = 100 * (w["protected"] - w["owner"])
            cost = r["accuracy_cost_text"]
            assert f"({w['owner']:.3f} -> {w['protected']:.3f})" in cost
            assert cost.startswith(f"{-d:.1f} points lost") if round(d, 1) < 0 else cost.startswith("none:")
            assert r["false_positives"] == w["fp"]
        for phrase in [r["verdict"], r["accuracy_cost_text"], *r["removed_by"]]:
            assert phrase in terminal, phrase
            assert html.escape(phrase) in headline, phrase


def test_a_risen_accuracy_is_not_a_cost_and_a_damaging_attack_is_not_survived():
    cells, negatives = rows()
    risen = [{**c, "protected_acc": 0.947, "owner_acc": 0.923} for c in cells if c["protection"] == "trigger-set"]
    risen = [c for c in risen if c["attack_name"] != "prune"]  # unattacked, and the damaging rtal only
    r = survival(risen, negatives)[0]
    assert r["accuracy_cost_text"] == "none: accuracy rose 2.4 points (0.923 -> 0.947)"
    assert r["verdict"].startswith("survived 0 of 1 attacks; 1 more left it undetected")
    assert outcomes.cost_text(0.9, 0.9) == "none: accuracy unchanged (0.900 -> 0.900)"


def test_never_detected_says_why_from_the_verdict_details():
    cells, negatives = rows()
    ce = [{**c, "detail": {"references": 1}, "p_value": 0.5} for c in cells if c["protection"] == "c-examples"]
    v = survival(ce, negatives)[0]["verdict"]
    assert "p-value was 0.5" in v and "1 reference model;" in v and "give more reference models" in v


def test_count_sweeps_get_whole_ticks_and_tables_wrap(html_text):
    import matplotlib

    matplotlib.use("Agg")
    cells, _ = rows()
    got = {}
    real = report_mod._png

    def capture(fig, alt):
        got.setdefault(alt, fig)
        return "<img>"

    report_mod._png = capture
    try:
        report_mod._attack_panels(cells, "acc", "attacked test accuracy", LOCK_HELD_MARGIN)
    finally:
        report_mod._png = real
    fig = got["attacked test accuracy per attack"]
    collude = next(a for a in fig.axes if a.get_title().startswith("collude"))
    assert [t.get_text() for t in collude.get_xticklabels()] == ["2", "3"]
    assert all(line.get_linestyle() == "None" for line in collude.get_lines() if line.get_marker() != "None")
    prune = next(a for a in fig.axes if a.get_title().startswith("prune"))
    xs = [tuple(line.get_xdata()) for line in prune.get_lines() if line.get_label() in ("trigger-set", "c-examples")]
    assert len(xs) == 2 and xs[0][0] != xs[1][0]  # equal values do not draw one line over another
    cells_sec = html_text.split("<section id='cells'>")[1].split("</section>")[0]
    assert "<td class='w'>" in cells_sec and "max-width:100%" in html_text
    methods = html_text.split("<section id='methods'>")[1].split("</section>")[0]
    assert "<b>ROC AUC</b> = " in methods and "<b>Uniqueness Score</b>" in methods


# ------------------------------------------------------------------ issue 24: the cheapest attack that removed it
def _removal(attack: str, data_fraction: float, queries: int, wall: float, *, acc: float = 0.91,
             owned: bool = False) -> dict:
    return _cell("trigger-set", "watermark", attack, {}, owned=owned, acc=acc, p=1e-9 if owned else 0.3,
                 cost={"data_fraction": data_fraction, "queries": queries, "examples": int(2000 * data_fraction)},
                 attack_wall_s=wall)


def test_headline_names_the_cheapest_attack_that_removed_it(tmp_path):
    """Of the attacks that removed the mark, the headline names the one that used the least data, then the
    fewest queries, then the least time; cheaper attacks that did not remove it are never named."""
    cells = [
        _cell("trigger-set", "watermark", "none", {}, owned=True, acc=OWNER, p=1e-9),
        _removal("finetune", 1.0, 0, 0.5),                # removed, but used all the data
        _removal("knockoff", 0.5, 1000, 9.0),             # half the data, 1000 queries
        _removal("distill", 0.5, 200, 30.0),              # half the data, fewer queries, slower: the cheapest
        _removal("prune", 0.0, 0, 0.1, owned=True),       # cheapest of all, but the mark survived it
        _removal("noise", 0.0, 0, 0.1, acc=0.5),          # free, but it wrecked the model: not a removal
    ]
    path = tmp_path / "results.sqlite"
    with Store(path) as s:
        for c in cells:
            s.put_cell(c)
    (row,) = outcomes.survival_from_db(path)
    assert row["cheapest_removal"].startswith("distill: 50% of the attacker's data, 200 queries, 30.0 s")
    assert sorted(x.split(" ")[0] for x in row["removed_by"]) == ["distill", "finetune", "knockoff"]
    assert [x.split(" ")[0] for x in row["survived"]] == ["noise", "prune"]
    html_text = report_mod.report(path, tmp_path / "r.html").read_text()
    headline = html_text.split("<section id='headline'>")[1].split("</section>")[0]
    assert html.escape(row["cheapest_removal"]) in headline and "Cheapest attack that removed it" in headline


def test_a_survivor_has_no_cheapest_removal_and_wall_time_breaks_ties():
    base = _cell("trigger-set", "watermark", "none", {}, owned=True, acc=OWNER, p=1e-9)
    survivor = survival([base, _removal("prune", 0.0, 0, 0.1, owned=True)], [])[0]
    assert survivor["status"] == "survived" and survivor["cheapest_removal"] is None
    tie = survival([base, _removal("slow", 0.1, 10, 5.0), _removal("fast", 0.1, 10, 1.0)], [])[0]
    assert tie["cheapest_removal"].startswith("fast: 10% of the attacker's data, 10 queries, 1.0 s")


def test_key_parameters_come_from_the_store_not_the_key_files(tmp_path):
    """The collusion bound falls back to the key parameters recorded when the protection was made (k - 1),
    read from the database alone: no key file exists next to it."""
    cells, negatives = rows()
    path = tmp_path / "results.sqlite"
    with Store(path) as s:
        for c in cells:
            s.put_cell({**c, "detail": {}} if c["family"] == "per-user" else c)
        s.put_artifact("prot-dm", "protection", "deepmarks seed 0",
                       {"protection": "deepmarks", "key_params": {"k": 3}}, 1.0)
        assert s.protection_params() == {"deepmarks": {"k": 3}}
    assert not (tmp_path / "cache").exists()
    dm = _by_prot(outcomes.survival_from_db(path))["deepmarks"]
    assert dm["status"] == "survived" and dm["cheapest_removal"] is None
    assert dm["removed_by"] == ["collude (k=3) [3 colluders: past the code's bound of 2]"]


def test_a_database_naming_an_unknown_family_is_refused_in_one_line(tmp_path):
    from modelseal.errors import ModelSealError

    old = tmp_path / "old.sqlite"
    with Store(old) as s:
        s.put_cell({**rows()[0][6], "family": "deepmarks"})  # how modelseal before the registry's families wrote it
    with pytest.raises(ModelSealError, match="older modelseal .*family deepmarks.*new run directory") as e:
        outcomes.survival_from_db(old)
    assert "\n" not in str(e.value)


def test_negatives_get_their_words_from_the_one_rule(html_text):
    _, negatives = rows()
    assert outcomes.negative_outcome(negatives[0]) == {"word": "not owned", "note": "p = 0.12"}
    dm = next(n for n in negatives if n["family"] == "per-user")
    assert outcomes.negative_outcome({**dm, "accused": [4]})["word"] == "accused [4]"
    assert outcomes.negative_outcome({**dm, "status": "error", "detail": {"error": "boom"}}) == \
        {"word": "error", "note": "boom"}
    negs = html_text.split("<section id='negatives'>")[1].split("</section>")[0]
    assert negs.count(">not owned<") == 6 and negs.count(">nobody accused<") == 3
