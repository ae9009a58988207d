"""What survived: one self-contained HTML report from a bench database (rendering only).

Every word it prints comes from `outcomes.py` (the one set of rules, shared with `modelseal bench report` and
`modelseal demo`): this module lays those words out as HTML tables and draws the plots; `survival_table` is the
same headline for the terminal.

Sections (each an element with this id): `headline` (per protection in plain words: survived / removed by
which attacks, with parameters / never detected, the cheapest attack that removed it with its cost, at what
alpha, with the accuracy cost; under it the `threat-table`: per threat of DESIGN.md section 7 the run measured —
"stolen through the API" from the extraction cells, and with siblings the innocent relatives — what each
protection found), `summary` (run and prepared models), `methods` (per protection: fidelity,
detection rate, false-positive rate on negatives, ROC AUC, Uniqueness Score, colluders found / innocents
accused, locked / unlocked / recovered accuracy, queries, removals, wall time), `arena` (the field's view:
per protection and peer baseline, ROC AUC, TPR at 1 % and 0.1 % FPR, TPR at alpha with the realised FPR, cost,
and the ROC curves; with siblings first a `siblings-table`: each method's FPR, AUC and TPR at 1 % FPR without and
with the owner's relatives among the negatives; `modelseal.bench.arena` decides what enters it), `cells` (every
cell with its attack parameters, alpha and outcome), `negatives`, `plot-accuracy` (accuracy vs attack), `plot-detection`
(p-value vs attack, log axis, alpha line) and `plot-scores` (p-values of negatives, unattacked and attacked
models, jittered, alpha line). Plots are 1200 px wide with their legends outside the axes.

A partial run says so above the headline (`partial`, with the counts planned and finished) and in every row it
concerns (`outcomes.partial_rows`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from .outcomes import (
    COST_ORDER,
    LOCK_HELD_MARGIN,
    REMOVAL_MARGIN,
    alpha_of,
    alpha_text,
    attack_text,
    completeness,
    cost_text,
    fmt,
    is_relative,
    mean,
    negative_outcome,
    outcomes,
    partial_rows,
    read_rows,
    survival,
    threats,
)

__all__ = ["SECTIONS", "report", "survival_table", "arena_table", "threat_table", "method_summary", "cost_text",
           "LOCK_HELD_MARGIN"]

SECTIONS = ["headline", "summary", "methods", "arena", "cells", "negatives", "plot-accuracy", "plot-detection",
            "plot-scores"]
P_FLOOR = 1e-30
_COST_WORDS = {"data_fraction": "the fraction of the attacker's data it used", "queries": "the queries it sent",
               "attack_wall_s": "its wall time"}  # p-values below this are drawn at it on log axes

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:1em 0;font-size:12px;max-width:100%}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right;white-space:nowrap}th{background:#f0f0f0}td.l,th.l{text-align:left}td.w{white-space:normal;
text-align:left;min-width:9em;max-width:30em}section{overflow-x:auto}.note{color:#555;font-size:13px;max-width:60em}img{width:100%;max-width:1200px;
border:1px solid #eee}#headline-table td{font-size:14px}.bad{color:#b00020;font-weight:600}
.good{color:#0a7d32;font-weight:600}.warn{color:#9a6700;font-weight:600}"""



def survival_table(rows: list[dict[str, Any]]) -> Any:
    """The survival rows as a rich Table for the terminal (same words as the HTML headline)."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="What survived? (one row per protection)", title_justify="left", show_lines=True)
    for col in ("protection", "verdict", "cheapest removal", "removed by", "alpha", "accuracy cost",
                "independent models accused"):
        t.add_column(col, overflow="fold")
    for r in rows:
        style = {"survived": "green", "removed": "red", "never": "yellow"}.get(r["status"], "yellow")
        t.add_row(escape(r["protection"]), f"[{style}]{escape(r['verdict'])}[/]",
                  escape(r.get("cheapest_removal") or "none"), escape("\n".join(r["removed_by"])) or "–",
                  alpha_text(r["alpha"]), r["accuracy_cost_text"], r["false_positives"] or "–")
    return t


def arena_table(rows: list[dict[str, Any]]) -> Any:
    """The arena rows (`bench.arena.arena`) as a rich Table for the terminal (same numbers as the HTML)."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="Arena: derived vs independent models (one row per protection)", title_justify="left")
    sibs = any(r.get("negatives_with_siblings") for r in rows)
    cols = ["protection", "positives / negatives", "ROC AUC", "TPR at 1% FPR", "TPR at 0.1% FPR", "TPR at alpha",
            "realised FPR"]
    if sibs:
        cols += ["with siblings: ROC AUC", "TPR at 1% FPR", "realised FPR", "siblings accused", "base owned"]
    for col in (*cols, "protect s", "verify queries"):
        t.add_column(col, overflow="fold")
    for r in rows:
        cells = [escape(r["protection"] + (" (peer baseline)" if r["peer_baseline"] else "")),
                 f"{r['positives']} / {r['negatives']}", fmt(r["auc"]), fmt(r["tpr_at_0.01"]),
                 fmt(r["tpr_at_0.001"]), "no references" if r["score_only"] else fmt(r["tpr_at_alpha"]),
                 fmt(r["realised_fpr"])]
        if sibs:
            cells += [fmt(r["auc_with_siblings"]), fmt(r["tpr_at_0.01_with_siblings"]),
                      fmt(r["realised_fpr_with_siblings"]), f"{r['siblings_accused']} of {r['siblings']}",
                      fmt(r["base_owned"])]
        t.add_row(*cells, fmt(r["protect_s"], 2), fmt(_int(r["verify_queries"])))
    return t


def threat_table(rows: list[dict[str, Any]]) -> Any:
    """The threat rows (`outcomes.threats`) as a rich Table for the terminal (same words as the HTML)."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="Threats (one row per threat, one column per protection)", title_justify="left",
              show_lines=True)
    prots = sorted({p for r in rows for p in r["by_protection"]})
    for col in ("threat", *prots):
        t.add_column(col, overflow="fold")
    for r in rows:
        t.add_row(escape(r["threat"]), *[escape(r["by_protection"].get(p, {}).get("text", "–")) for p in prots])
    return t


# ============================================================================ formatting
def _table(headers: list[str], rows: list[list[Any]], left: int = 1, wrap: tuple[int, ...] = (),
           table_id: str | None = None) -> str:
    def cls(i: int) -> str:
        return "w" if i in wrap else ("l" if i < left else "")

    ident = f" id='{table_id}'" if table_id else ""
    out = [f"<table{ident}><tr>" + "".join(f"<th class='{'l' if i < left or i in wrap else ''}'>{html.escape(h)}</th>"
                                           for i, h in enumerate(headers)) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td class='{cls(i)}'>{v if isinstance(v, _Raw) else html.escape(fmt(v))}</td>"
                                    for i, v in enumerate(r)) + "</tr>")
    return "".join(out) + "</table>"


class _Raw(str):
    """Already-escaped HTML for a table cell."""


def _lines(items: list[str]) -> _Raw:
    return _Raw("<br>".join(html.escape(i) for i in items) if items else "–")



def _int(x: float | None) -> int | None:
    return None if x is None else int(round(x))


def _pts(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f} points"


# ============================================================================ per-method metrics

def _score_is_match_rate(method: str) -> bool:
    """Whether the method declares its Verdict score a match rate (`score_is_match_rate`): the report then
    gives its Uniqueness Score (robustness minus transferability). False for a method not installed here."""
    from .. import methods
    from ..errors import RegistryError

    try:
        return bool(getattr(methods.get(method), "score_is_match_rate", False))
    except RegistryError:
        return False

def method_summary(cells: list[dict[str, Any]], negatives: list[dict[str, Any]],
                   keys: dict[str, dict[str, Any]] | None = None,
                   lock_margin: float = LOCK_HELD_MARGIN) -> list[dict[str, Any]]:
    """Per protection: the metrics of DESIGN.md section 6 (removals as decided by `cell_outcome`)."""
    from .. import stats

    by_prot: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for c, o in outcomes(cells, keys, lock_margin):
        by_prot[c["protection"]].append((c, o))
    negs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for n in negatives:  # independent models: the owner's relatives have their own columns (arena, threats)
        if n["status"] == "ok" and not is_relative(n):
            negs[n["protection"]].append(n)
    out = []
    for prot, items in sorted(by_prot.items()):
        cs = [c for c, _ in items]
        ok = [c for c in cs if c["status"] == "ok"]
        fam = cs[0]["family"]
        ns = negs.get(prot, [])
        pos_scores = [c["score"] for c in ok if c["score"] is not None]
        neg_scores = [n["score"] for n in ns if n["score"] is not None]
        auc = None
        if pos_scores and neg_scores and fam != "lock":
            try:
                auc = stats.roc_auc(pos_scores, neg_scores)
            except ValueError:
                auc = None
        detected = [o["kind"] in ("detected", "held") for c, o in items if c["status"] == "ok"]
        row: dict[str, Any] = {
            "protection": prot, "method": cs[0]["method"], "family": fam, "cells": len(cs), "ok": len(ok),
            "owner_acc": mean([c["owner_acc"] for c in ok]), "protected_acc": mean([c["protected_acc"] for c in ok]),
            "detection_rate": mean([float(d) for d in detected]),
            "fpr": mean([float(bool(n["owned"])) for n in ns]) if ns else None,
            "roc_auc": auc, "queries": _int(mean([c["queries"] for c in ok])),
            "removed": sum(o["removed"] for _, o in items), "wall_s": sum(c["wall_s"] or 0 for c in cs),
            "uniqueness": None, "colluders_found": None, "innocents_accused": None,
            "locked_acc": None, "unlocked_acc": None, "recovered_acc": None}
        if row["owner_acc"] is not None and row["protected_acc"] is not None:
            row["fidelity"] = row["protected_acc"] - row["owner_acc"]
        else:
            row["fidelity"] = None
        if _score_is_match_rate(cs[0]["method"]) and ok and ns:
            robust = [c["score"] for c in ok if c["attack_name"] != "none"] or [c["score"] for c in ok]
            row["uniqueness"] = stats.uniqueness_score(robust, [n["score"] for n in ns])
        if fam == "per-user":
            coll = [c for c in ok if c.get("colluders")]
            row["colluders_found"] = (f"{sum(c['colluders_found'] or 0 for c in coll)} of "
                                      f"{sum(len(c['colluders']) for c in coll)} in {len(coll)} cells")
            row["innocents_accused"] = sum(c["innocents_accused"] or 0 for c in ok) + \
                sum(n["innocents_accused"] or 0 for n in ns)
        if fam == "lock":
            row["locked_acc"] = row["protected_acc"]
            row["unlocked_acc"] = mean([c["unlocked_acc"] for c in ok])
            rec = [c["attacked_acc"] for c in ok if c["attack_name"] != "none"]
            row["recovered_acc"] = max(rec) if rec else None
            row["fidelity"] = None if row["unlocked_acc"] is None or row["owner_acc"] is None \
                else row["unlocked_acc"] - row["owner_acc"]
        out.append(row)
    return out


# ============================================================================ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 10})
    return plt


def _png(fig: Any, alt: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return (f"<img alt='{html.escape(alt)}' src='data:image/png;base64,"
            + base64.b64encode(buf.getvalue()).decode() + "'>")


def _grid(plt: Any, n: int, height: float = 3.6) -> tuple[Any, list[Any]]:
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12, height * rows), squeeze=False)
    flat = [a for row in axes for a in row]
    for a in flat[n:]:
        a.set_visible(False)
    return fig, flat[:n]


def _legend_outside(fig: Any, axes: list[Any]) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=False):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        fig.legend([handles[lab] for lab in labels], labels, loc="center left", bbox_to_anchor=(1.0, 0.5),
                   frameon=False)
    fig.tight_layout()


def _jitter(n: int, seed: int, width: float = 0.12) -> list[float]:
    import numpy as np

    return list(np.random.default_rng(seed).uniform(-width, width, n))


def _p(c: dict[str, Any]) -> float | None:
    p = c.get("p_value")
    return None if p is None else max(float(p), P_FLOOR)


def _colors(plt: Any, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """One colour per protection, the same in every plot of a report."""
    return {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(sorted({c["protection"] for c in cells}))}


def _attack_panels(cells: list[dict[str, Any]], value: str, ylabel: str, lock_margin: float) -> str:
    """Per swept attack: value vs strength, one line per protection; then one dot plot of the other attacks
    (never the unattacked cell: its value is drawn as each protection's reference instead)."""
    plt = _plt()
    ok = [c for c in cells if c["status"] == "ok" and (value == "acc" or c["family"] != "lock")]
    attacked = [c for c in ok if c["attack_name"] != "none"]
    swept = sorted({c["attack_name"] for c in attacked if c["swept"]})
    unswept = sorted({str(c["attack"]) for c in attacked if not c["swept"]})
    prots = sorted({c["protection"] for c in ok})
    n = len(swept) + (1 if unswept else 0)
    if n == 0:
        return "<p class='note'>no attacked cells to plot</p>"
    colors = _colors(plt, cells)
    fig, axes = _grid(plt, n)

    def y_of(c: dict[str, Any]) -> float | None:
        return c["attacked_acc"] if value == "acc" else _p(c)

    def finish(ax: Any) -> None:
        if value == "acc":
            owner = mean([c["owner_acc"] for c in ok])
            if owner is not None:
                ax.axhline(owner, color="black", ls="--", lw=1, label="owner accuracy")
                ax.axhline(owner - REMOVAL_MARGIN, color="grey", ls=":", lw=1,
                           label=f"owner - {100 * REMOVAL_MARGIN:.0f} points (removal needs accuracy above)")
                if any(c["family"] == "lock" for c in ok):
                    ax.axhline(owner - lock_margin, color="tab:red", ls="-.", lw=1,
                               label=f"owner - {100 * lock_margin:.0f} points (a lock holds below)")
            ax.set_ylim(-0.05, 1.05)
        else:
            ax.set_yscale("log")
            for a in sorted({alpha_of(c) for c in ok}):
                ax.axhline(a, color="tab:red", ls="--", lw=1, label=f"alpha = {a:.0e} (owned below)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)

    markers, styles = "osD^vP", ["-", "--", "-.", ":"]
    for ax, name in zip(axes, swept, strict=False):
        every = sorted({c["strength"] for c in attacked if c["attack_name"] == name and c["strength"] is not None})
        # lines of protections with equal values would hide each other: each is moved sideways by a small,
        # fixed fraction of the axis and drawn with its own marker and dash
        span = (every[-1] - every[0]) if len(every) > 1 else 1.0
        counts = bool(every) and all(float(x).is_integer() for x in every)  # e.g. colluders k: no line between
        for i, p in enumerate(prots):
            pts: dict[float, list[float]] = defaultdict(list)
            for c in attacked:
                y = y_of(c)
                if c["attack_name"] == name and c["protection"] == p and c["strength"] is not None and y is not None:
                    pts[c["strength"]].append(y)
            if pts:
                xs = sorted(pts)
                dx = span * 0.012 * (i - (len(prots) - 1) / 2)
                ax.plot([x + dx for x in xs], [sum(pts[x]) / len(pts[x]) for x in xs], marker=markers[i % 6],
                        ls="none" if counts else styles[i % 4], alpha=0.85, color=colors[p], label=p)
        if counts:  # ticks only at the counts that ran
            ax.set_xticks(every, [str(int(x)) for x in every])
        param = next(c["swept"] for c in attacked if c["attack_name"] == name)
        ax.set_title(f"{name}: swept {param}")
        ax.set_xlabel(param)
        finish(ax)
    if unswept:
        ax = axes[-1]
        width = 0.6 / max(1, len(prots))
        for i, p in enumerate(prots):
            for j, a in enumerate(unswept):
                vs = [y_of(c) for c in attacked if str(c["attack"]) == a and c["protection"] == p
                      and y_of(c) is not None]
                if vs:
                    x = j - 0.3 + width * (i + 0.5)
                    ax.scatter([x] * len(vs), vs, color=colors[p], s=40, zorder=3, label=p)
        ax.set_xticks(range(len(unswept)), unswept, rotation=20, ha="right")
        ax.set_xlim(-0.6, len(unswept) - 0.4)
        ax.set_title("attacks without a sweep (a dot per cell; no dot: not applied)")
        finish(ax)
    _legend_outside(fig, axes)
    return _png(fig, f"{ylabel} per attack")


def _plot_scores(cells: list[dict[str, Any]], negatives: list[dict[str, Any]]) -> str:
    plt = _plt()
    prots = sorted({c["protection"] for c in cells if c["status"] == "ok" and c["family"] != "lock"})
    if not prots:
        return "<p class='note'>no verdicts to plot</p>"
    fig, axes = _grid(plt, len(prots), height=3.4)
    groups = [("independent models", "tab:red"), ("protected, no attack", "tab:green"), ("attacked", "tab:blue")]
    for k, (ax, p) in enumerate(zip(axes, prots, strict=False)):
        ok = [c for c in cells if c["protection"] == p and c["status"] == "ok"]
        values = [
            [v for n in negatives if n["protection"] == p and n["status"] == "ok" and not is_relative(n)
             and (v := _p(n)) is not None],
            [v for c in ok if c["attack_name"] == "none" and (v := _p(c)) is not None],
            [v for c in ok if c["attack_name"] != "none" and (v := _p(c)) is not None]]
        for x, ((label, color), vs) in enumerate(zip(groups, values, strict=False)):
            ax.scatter([x + j for j in _jitter(len(vs), seed=31 * k + x)], vs, color=color, alpha=0.75, s=36,
                       label=label, zorder=3)
        for a in sorted({alpha_of(c) for c in ok}):
            ax.axhline(a, color="tab:red", ls="--", lw=1, label=f"alpha = {a:.0e} (owned below)")
        ax.set_yscale("log")
        ax.set_xticks([0, 1, 2], ["independent", "protected", "attacked"])
        ax.set_xlim(-0.5, 2.5)
        ax.set_title(p)
        ax.set_ylabel("p-value (log)")
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes)
    return _png(fig, "p-values of independent, protected and attacked models")


def _plot_roc(rows: list[dict[str, Any]]) -> str:
    """ROC curves of every protection with both populations: linear axes, and a log FPR axis (the low
    false-positive end the field reports); peer baselines dashed."""
    plt = _plt()
    drawn = [r for r in rows if r["fpr"]]
    if not drawn:
        return "<p class='note'>no protection has both derived and independent models scored: no ROC</p>"
    fig, axes = _grid(plt, 2, height=4.6)
    colors = {r["protection"]: plt.get_cmap("tab10")(i % 10) for i, r in enumerate(drawn)}
    for ax, log in zip(axes, (False, True), strict=True):
        for r in drawn:
            fpr = r["fpr"]
            floor = 0.5 * (r["fpr_resolution"] or 1.0)  # FPR 0 is drawn at half the resolution on the log axis
            xs = [max(x, floor) for x in fpr] if log else fpr
            label = f"{r['protection']}{' (peer baseline)' if r['peer_baseline'] else ''}: AUC {r['auc']:.3f}"
            ax.step(xs, r["tpr"], where="post", color=colors[r["protection"]], lw=1.8, alpha=0.9,
                    ls="--" if r["peer_baseline"] else "-", label=label)
        chance = [10 ** (-4 + 4 * i / 100) for i in range(101)] if log else [0.0, 1.0]
        ax.plot(chance, chance, color="grey", lw=0.8, ls=":", label="chance (TPR = FPR)")
        if log:
            ax.set_xscale("log")
            ax.set_xlim(left=min(0.5 * (r["fpr_resolution"] or 1.0) for r in drawn) * 0.8, right=1.05)
            ax.set_title("ROC, log false-positive axis (FPR 0 drawn at half the resolution 1/negatives)")
        else:
            ax.set_xlim(-0.02, 1.02)
            ax.set_title("ROC: derived (positives) vs independent models (negatives)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("false-positive rate (independent models scored at or above the threshold)")
        ax.set_ylabel("true-positive rate (derived models)")
        ax.grid(alpha=0.3)
    _legend_outside(fig, axes[:1])
    return _png(fig, "ROC curves of every protection and peer baseline")


def _siblings_table(rows: list[dict[str, Any]]) -> str:
    """The arena with and without the owner's relatives (siblings of the public base and the base itself)."""
    note = ("<p class='note'><b>With and without siblings.</b> This run's owner is a fine-tune of a public base, and "
            "innocent parties fine-tuned the same base on their own data (<b>siblings</b>). They took nothing from "
            "the owner, so accusing one is a false accusation, but they share the owner's ancestor: a fingerprint "
            "or the lineage test that measures relatedness finds it. The columns <i>without siblings</i> are the "
            "independent models alone (the table below); <i>with siblings</i> adds the siblings and the base to "
            "the negatives.</p>")
    return note + _table(
        ["protection", "method", "negatives without / with siblings", "realised FPR without siblings",
         "realised FPR with siblings", "siblings accused at alpha", "public base owned", "ROC AUC without siblings",
         "ROC AUC with siblings", "TPR at 1% FPR without siblings", "TPR at 1% FPR with siblings"],
        [[r["protection"], r["method"], f"{r['negatives']} / {r['negatives_with_siblings']}",
          "never accuses (no references)" if r["score_only"] else r["realised_fpr"],
          "never accuses (no references)" if r["score_only"] else r["realised_fpr_with_siblings"],
          f"{r['siblings_accused']} of {r['siblings']}", r["base_owned"], r["auc"], r["auc_with_siblings"],
          r["tpr_at_0.01"], r["tpr_at_0.01_with_siblings"]] for r in rows], left=2, table_id="siblings-table")


def _arena_section(cells: list[dict[str, Any]], negatives: list[dict[str, Any]], artifacts: list[dict[str, Any]],
                   keys: dict[str, dict[str, Any]]) -> str:
    from .arena import arena

    rows = arena(cells, negatives, artifacts, keys)
    parts = ["<section id='arena'><h2>Arena: ROC over derived and independent models</h2>",
             "<p class='note'>The field's view (QuRD, AAAI 2025; WAVES, ICML 2024). <b>Positives</b>: the "
             "protection's protected model unattacked and under every attack that kept its accuracy within "
             f"{100 * REMOVAL_MARGIN:.0f} points of the owner's; <b>negatives</b>: the independent models (other "
             "seeds, architectures, data splits, and students extracted from independent models). Models are "
             "ranked by each verdict's own score; a model the key cannot judge ranks below all. <b>TPR at 1 % / "
             "0.1 % FPR</b>: the share of positives found by a threshold that accuses at most that share of the "
             "negatives — with N negatives the smallest non-zero FPR is 1/N, so with fewer than 100 (1,000) "
             "negatives it is the TPR at zero false positives. <b>TPR at alpha</b>: positives the verdict owned "
             "(p-value at most alpha), with the realised FPR on the negatives beside it; peer baselines without "
             "reference models are score-only and never accuse.</p>"]
    if not rows:
        parts.append("<p class='note'>no protection with derived and independent models in this run</p></section>")
        return "".join(parts)
    if any(r.get("negatives_with_siblings") for r in rows):
        parts.append(_siblings_table(rows))
    parts.append(_table(
        ["protection", "method", "peer baseline", "positives", "negatives", "ROC AUC", "TPR at 1% FPR",
         "TPR at 0.1% FPR", "FPR resolution", "TPR at alpha", "realised FPR", "alpha", "protect s",
         "verify queries", "cheapest attack that removed it", "left out (damaged)", "not judgeable"],
        [[r["protection"], r["method"], "yes" if r["peer_baseline"] else "", r["positives"], r["negatives"],
          r["auc"], r["tpr_at_0.01"], r["tpr_at_0.001"], r["fpr_resolution"],
          "never accuses (no references)" if r["score_only"] else r["tpr_at_alpha"], r["realised_fpr"],
          alpha_text(r["alpha"]),
          r["protect_s"], _int(r["verify_queries"]), r["cheapest_removal"] or "none", r["damaged"],
          r["not_applicable"]] for r in rows], left=3, wrap=(14,), table_id="arena-table"))
    parts.append(_plot_roc(rows))
    parts.append("</section>")
    return "".join(parts)


def _threat_html(rows: list[dict[str, Any]]) -> str:
    """The threat table under the headline: one row per threat of DESIGN.md section 7 the run measured, one
    column per protection (`outcomes.threats` decides every word)."""
    prots = sorted({p for r in rows for p in r["by_protection"]})
    if not prots:
        return ""
    body = _table(["threat", *prots],
                  [[r["threat"], *[r["by_protection"].get(p, {}).get("text", "–") for p in prots]] for r in rows],
                  left=1, wrap=tuple(range(1, len(prots) + 1)), table_id="threat-table")
    notes = "".join(f"<li><b>{html.escape(r['threat'])}</b>: {html.escape(r['note'])}</li>" for r in rows)
    return f"<h3>Threats</h3>{body}<ul class='note'>{notes}</ul>"


# ============================================================================ the HTML
def _status_class(status: str) -> str:
    return {"survived": "good", "removed": "bad", "never": "warn"}.get(status, "")


def report(db_path: str | Path, out_html: str | Path, force: bool = False,
           lock_margin: float = LOCK_HELD_MARGIN) -> Path:
    """Write the HTML report of the database `db_path` to `out_html` (refused if it exists without force)."""
    from ..safeio import check_writable, write_atomic

    meta, cells, negatives, artifacts, keys = read_rows(db_path)
    out_html = Path(out_html)
    check_writable(out_html, force)
    last = json.loads(meta.get("last_run", "{}"))
    name = html.escape(meta.get("scenario_name", "?"))
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>modelseal bench: {name}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>modelseal robustness benchmark: {name}</h1>"]

    part = completeness(meta, cells, negatives)
    rows = partial_rows(survival(cells, negatives, keys, lock_margin), part)
    if part is not None:
        parts.append(f"<section id='partial'><p class='bad'>{html.escape(part['text'])}</p></section>")
    parts.append("<section id='headline'><h2>What survived?</h2>")
    parts.append(_table(
        ["protection", "verdict", "cheapest attack that removed it", "removed by (attack and parameters)",
         "survived", "alpha", "accuracy cost", "independent models accused"],
        [[r["protection"], _Raw(f"<span class='{_status_class(r['status'])}'>{html.escape(r['verdict'])}</span>"),
          r["cheapest_removal"] or "none", _lines(r["removed_by"]), _lines(r["survived"]), alpha_text(r["alpha"]),
          r["accuracy_cost_text"], r["false_positives"]] for r in rows], left=1, wrap=(1, 2, 3, 4, 6),
        table_id="headline-table"))
    parts.append(
        f"<p class='note'>A watermark or fingerprint is <b>detected</b> when its verdict's p-value is at most alpha "
        f"(the chance that an independent model scores as well). An attack <b>removes</b> it when the unattacked "
        f"protected model was detected, the attacked one is not, and the attacked model keeps its accuracy within "
        f"{100 * REMOVAL_MARGIN:.0f} points of the owner's; a protection whose unattacked model was not detected is "
        f"<b>never detected</b>, and no attack is counted as removing it. A lock <b>holds</b> while the attacked "
        f"model's accuracy stays at least {100 * lock_margin:.0f} points below the owner's. Accuracy cost: protected "
        f"minus owner accuracy (locks: unlocked minus owner), in percentage points. Collusion past the code's bound "
        "is labelled: the code does not promise to trace it. Accuracy cost is a cost only when accuracy fell; "
        "the protected accuracy shown is the mean over this protection's cells, the same number everywhere. "
        "<b>Cheapest attack that removed it</b> (locks: that recovered it): the removal that cost the thief least, "
        f"ordered by {', then '.join(_COST_WORDS[k] for k in COST_ORDER)} (collusion past the code's bound is "
        "not counted).</p>")
    parts.append(_threat_html(threats(cells, negatives)))
    parts.append("</section>")

    parts.append("<section id='summary'><h2>Run</h2>")
    parts.append(_table(["item", "value"], [
        ["data", meta.get("data")], ["created", meta.get("created")],
        ["modelseal", meta.get("modelseal_version")], ["backend", last.get("backend")],
        ["cells", f"{len(cells)} ({sum(c['status'] == 'ok' for c in cells)} ok, "
                  f"{sum(c['status'] == 'skipped' for c in cells)} skipped, "
                  f"{sum(c['status'] == 'error' for c in cells)} errors)"],
        ["negative verdicts", len(negatives)], ["last run seconds", last.get("seconds")]]))
    parts.append("<h3>Prepared models</h3>")
    parts.append(_table(["kind", "label", "test accuracy", "seconds"],
                        [[a["kind"], a["label"], a["info"].get("accuracy", a["info"].get("protected_acc")),
                          a["wall_s"]] for a in artifacts], left=2))
    parts.append("</section>")

    parts.append("<section id='methods'><h2>Per method</h2><p class='note'>fidelity = protected (for locks: "
                 "unlocked) minus owner accuracy; detection rate = share of this protection's cells judged owned "
                 "(locks: lock held); FPR = share of independent models judged owned; removed = cells whose outcome "
                 "is REMOVED (or RECOVERED for locks), as in the headline; colluders found = colluders accused of all "
                 "colluders, over the collusion cells. <b>ROC AUC</b> = the chance that a randomly chosen protected or "
                 "attacked model of this protection gets a higher verdict score than a randomly chosen independent "
                 "model (1 = the score always tells them apart, 0.5 = a coin flip). <b>Uniqueness Score</b> (for "
                 "methods whose score is a match rate, e.g. c-examples; Wang et al. 2021) = robustness minus "
                 "transferability: the mean match rate on attacked copies minus the mean on independent models "
                 "(near 1: the fingerprint stays on copies and is absent elsewhere; near 0 or below: it does not "
                 "single out this model).</p>")
    summ = method_summary(cells, negatives, keys, lock_margin)
    parts.append(_table(
        ["protection", "method", "cells ok", "owner acc", "fidelity", "detection rate", "FPR (negatives)",
         "ROC AUC", "Uniqueness Score", "colluders found", "innocents accused", "locked acc", "unlocked acc",
         "recovered acc", "mean queries", "removed", "wall s"],
        [[r["protection"], r["method"], f"{r['ok']}/{r['cells']}", r["owner_acc"], _pts(r["fidelity"]),
          r["detection_rate"], r["fpr"], r["roc_auc"], r["uniqueness"], r["colluders_found"],
          r["innocents_accused"], r["locked_acc"], r["unlocked_acc"], r["recovered_acc"], r["queries"],
          r["removed"], _Raw(f"{r['wall_s']:.1f}")] for r in summ], left=2, wrap=(9,)))
    parts.append("</section>")

    parts.append(_arena_section(cells, negatives, artifacts, keys))

    parts.append("<section id='cells'><h2>Cells</h2>")
    parts.append(_table(
        ["protection", "attack (parameters)", "seed", "outcome", "protected acc", "attacked acc", "p-value", "alpha",
         "queries", "accused", "note", "wall s"],
        [[c["protection"], attack_text(c), c["seed"], o["word"], c["protected_acc"], c["attacked_acc"], c["p_value"],
          None if c["family"] == "lock" else alpha_of(c), c["queries"],
          c["accused"] if c["family"] == "per-user" else None, o["note"], _Raw(f"{c['wall_s'] or 0:.1f}")]
         for c, o in outcomes(cells, keys, lock_margin)], left=2, wrap=(1, 3, 10)))
    parts.append("</section>")

    parts.append("<section id='negatives'><h2>Negatives (independent models, and the owner's relatives where the "
                 "scenario has siblings)</h2>")
    parts.append(_table(
        ["protection", "negative", "kind", "seed", "status", "accuracy", "outcome", "p-value", "alpha", "queries",
         "innocents accused", "note"],
        [[n["protection"], n["negative"], n.get("kind") or "independent", n["seed"], n["status"], n["accuracy"],
          negative_outcome(n)["word"],
          n["p_value"], alpha_of(n), n["queries"], n["innocents_accused"],
          (n["detail"] or {}).get("not_applicable", "")] for n in negatives], left=3, wrap=(11,)))
    parts.append("</section>")

    parts.append("<section id='plot-accuracy'><h2>Accuracy after each attack</h2>"
                 + _attack_panels(cells, "acc", "attacked test accuracy", lock_margin) + "</section>")
    parts.append("<section id='plot-detection'><h2>Verdict p-value after each attack</h2><p class='note'>One scale "
                 f"for every method: the p-value (log axis; below {P_FLOOR:.0e} drawn at it); owned below the alpha "
                 "line. Locks have no verdict: see the accuracy plot.</p>"
                 + _attack_panels(cells, "p", "p-value (log)", lock_margin) + "</section>")
    parts.append("<section id='plot-scores'><h2>p-values: independent vs protected vs attacked models</h2>"
                 "<p class='note'>Each dot is one model, spread sideways so that equal values stay visible.</p>"
                 + _plot_scores(cells, negatives) + "</section>")
    parts.append("</body></html>")
    return write_atomic(out_html, "".join(parts), force=True)

