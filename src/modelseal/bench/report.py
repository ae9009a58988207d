"""One self-contained HTML report from a bench database: per-method tables and embedded PNG plots.

Sections (each an element with this id): `summary` (run and prepared models), `methods` (per protection:
fidelity, detection rate on positives, false-positive rate on negatives, ROC AUC, Uniqueness Score for
c-examples, colluders found / innocents accused for deepmarks, locked / unlocked / recovered accuracy for
locks, queries, removals, wall time), `cells` (every cell), `negatives` (every negative's verdict),
`plot-accuracy` (accuracy vs attack strength), `plot-detection` (detection vs attack strength) and
`plot-scores` (score distributions of positives vs negatives). Positives are the cells whose status is
`ok`; for locks "detected" means the lock held (accuracy stayed collapsed).
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

from ..errors import ModelSealError
from ..tensorfile import check_writable, write_atomic
from .store import Store

SECTIONS = ["summary", "methods", "cells", "negatives", "plot-accuracy", "plot-detection", "plot-scores"]

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0;
font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f0f0f0}
td.l,th.l{text-align:left}.note{color:#666;font-size:13px}img{max-width:100%;border:1px solid #eee}"""


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _table(headers: list[str], rows: list[list[Any]], left: int = 1) -> str:
    out = ["<table><tr>" + "".join(f"<th class='{'l' if i < left else ''}'>{html.escape(h)}</th>"
                                   for i, h in enumerate(headers)) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td class='{'l' if i < left else ''}'>{html.escape(_fmt(v))}</td>"
                                    for i, v in enumerate(r)) + "</tr>")
    return "".join(out) + "</table>"


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "<img alt='plot' src='data:image/png;base64," + base64.b64encode(buf.getvalue()).decode() + "'>"


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def method_summary(cells: list[dict[str, Any]], negatives: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per protection: the metrics of DESIGN.md section 6."""
    from .. import stats

    by_prot: dict[str, list[dict[str, Any]]] = defaultdict(list)
    negs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in cells:
        by_prot[c["protection"]].append(c)
    for n in negatives:
        if n["status"] == "ok":
            negs[n["protection"]].append(n)
    out = []
    for prot, cs in sorted(by_prot.items()):
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
        row: dict[str, Any] = {
            "protection": prot, "method": cs[0]["method"], "family": fam, "cells": len(cs), "ok": len(ok),
            "owner_acc": _mean([c["owner_acc"] for c in ok]), "protected_acc": _mean([c["protected_acc"] for c in ok]),
            "detection_rate": _mean([float(bool(c["owned"])) for c in ok]),
            "fpr": _mean([float(bool(n["owned"])) for n in ns]) if ns else None,
            "roc_auc": auc, "queries": _mean([c["queries"] for c in ok]),
            "removed": sum(bool(c["removed"]) for c in ok), "wall_s": sum(c["wall_s"] or 0 for c in cs),
            "uniqueness": None, "colluders_found": None, "innocents_accused": None,
            "locked_acc": None, "unlocked_acc": None, "recovered_acc": None}
        if row["owner_acc"] is not None and row["protected_acc"] is not None:
            row["fidelity"] = row["protected_acc"] - row["owner_acc"]
        else:
            row["fidelity"] = None
        if cs[0]["method"] == "c-examples" and ok and ns:
            robust = [c["score"] for c in ok if c["attack_name"] != "none"] or [c["score"] for c in ok]
            row["uniqueness"] = stats.uniqueness_score(robust, [n["score"] for n in ns])
        if fam == "per-user":
            row["colluders_found"] = f"{sum(c['colluders_found'] or 0 for c in ok)} / " \
                                     f"{sum(len(c['colluders'] or []) for c in ok)}"
            row["innocents_accused"] = sum(c["innocents_accused"] or 0 for c in ok) + \
                sum(n["innocents_accused"] or 0 for n in ns)
        if fam == "lock":
            row["locked_acc"] = row["protected_acc"]
            row["unlocked_acc"] = _mean([c["unlocked_acc"] for c in ok])
            rec = [c["attacked_acc"] for c in ok if c["attack_name"] != "none"]
            row["recovered_acc"] = max(rec) if rec else None
            row["fidelity"] = None if row["unlocked_acc"] is None or row["owner_acc"] is None \
                else row["unlocked_acc"] - row["owner_acc"]
        out.append(row)
    return out


def _plots_vs_strength(cells: list[dict[str, Any]], value: str, ylabel: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [c for c in cells if c["status"] == "ok"]
    swept = sorted({c["attack_name"] for c in ok if c["swept"]})
    unswept = sorted({c["attack"] for c in ok if not c["swept"]})
    prots = sorted({c["protection"] for c in ok})
    n = len(swept) + (1 if unswept else 0)
    if n == 0:
        return "<p class='note'>no finished cells to plot</p>"
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2), squeeze=False)
    for ax, name in zip(axes[0], swept, strict=False):
        for p in prots:
            pts = defaultdict(list)
            for c in ok:
                if c["attack_name"] == name and c["protection"] == p and c["strength"] is not None:
                    v = c["attacked_acc"] if value == "acc" else float(bool(c["owned"]))
                    pts[c["strength"]].append(v)
            if pts:
                xs = sorted(pts)
                ax.plot(xs, [sum(pts[x]) / len(pts[x]) for x in xs], marker="o", label=p)
        param = next(c["swept"] for c in ok if c["attack_name"] == name)
        ax.set_title(name)
        ax.set_xlabel(param)
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=7)
    if unswept:
        ax = axes[0][-1]
        width = 0.8 / max(1, len(prots))
        for i, p in enumerate(prots):
            ys = []
            for a in unswept:
                vs = [c["attacked_acc"] if value == "acc" else float(bool(c["owned"]))
                      for c in ok if c["attack"] == a and c["protection"] == p]
                ys.append(sum(vs) / len(vs) if vs else 0.0)
            ax.bar([j + i * width for j in range(len(unswept))], ys, width=width, label=p)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(unswept))], unswept, rotation=30, fontsize=7)
        ax.set_title("attacks without a sweep")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7)
    return _png(fig)


def _plot_scores(cells: list[dict[str, Any]], negatives: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prots = sorted({c["protection"] for c in cells if c["status"] == "ok" and c["family"] != "lock"})
    if not prots:
        return "<p class='note'>no verdict scores to plot</p>"
    fig, axes = plt.subplots(1, len(prots), figsize=(3.6 * len(prots), 3.0), squeeze=False)
    for ax, p in zip(axes[0], prots, strict=False):
        pos = [c["score"] for c in cells if c["protection"] == p and c["status"] == "ok" and c["score"] is not None]
        neg = [n["score"] for n in negatives if n["protection"] == p and n["status"] == "ok"
               and n["score"] is not None]
        ax.scatter([1] * len(pos), pos, alpha=0.6, label=f"positives ({len(pos)})")
        ax.scatter([0] * len(neg), neg, alpha=0.6, color="tab:red", label=f"negatives ({len(neg)})")
        ax.set_xticks([0, 1], ["negatives", "positives"])
        ax.set_xlim(-0.5, 1.5)
        ax.set_title(p)
        ax.set_ylabel("verdict score" + (" (-log10 p)" if any(c["family"] == "per-user" and c["protection"] == p
                                                               for c in cells) else ""))
        ax.legend(fontsize=7)
    return _png(fig)


def report(db_path: str | Path, out_html: str | Path, force: bool = False) -> Path:
    """Write the HTML report of the database `db_path` to `out_html` (refused if it exists without force)."""
    db_path, out_html = Path(db_path), Path(out_html)
    if not db_path.is_file():
        raise ModelSealError(f"results database {db_path} does not exist; run `modelseal bench run` first")
    check_writable(out_html, force)
    with Store(db_path) as s:
        meta, cells, negatives, artifacts = s.meta(), s.cells(), s.negatives(), s.artifacts()
    last = json.loads(meta.get("last_run", "{}"))
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>modelseal bench: "
             f"{html.escape(meta.get('scenario_name', '?'))}</title><style>{_CSS}</style></head><body>",
             f"<h1>modelseal robustness benchmark: {html.escape(meta.get('scenario_name', '?'))}</h1>"]
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
                 "unlocked) minus owner accuracy; detection = share of attacked/unattacked positives judged "
                 "owned (locks: lock held); FPR = share of negatives judged owned; removed = verdict flipped "
                 "while accuracy stayed within 5 points of the owner's.</p>")
    summ = method_summary(cells, negatives)
    parts.append(_table(
        ["protection", "method", "cells ok", "owner acc", "fidelity", "detection rate", "FPR (negatives)",
         "ROC AUC", "Uniqueness Score", "colluders found", "innocents accused", "locked acc", "unlocked acc",
         "recovered acc", "mean queries", "removed", "wall s"],
        [[r["protection"], r["method"], f"{r['ok']}/{r['cells']}", r["owner_acc"], r["fidelity"],
          r["detection_rate"], r["fpr"], r["roc_auc"], r["uniqueness"], r["colluders_found"],
          r["innocents_accused"], r["locked_acc"], r["unlocked_acc"], r["recovered_acc"], r["queries"],
          r["removed"], r["wall_s"]] for r in summ], left=2))
    parts.append("</section>")

    parts.append("<section id='cells'><h2>Cells</h2>")
    parts.append(_table(
        ["protection", "attack", "seed", "status", "protected acc", "attacked acc", "owned", "score", "p-value",
         "queries", "removed", "accused", "wall s", "note"],
        [[c["protection"], c["attack"], c["seed"], c["status"], c["protected_acc"], c["attacked_acc"],
          None if c["owned"] is None else bool(c["owned"]), c["score"], c["p_value"], c["queries"],
          None if c["removed"] is None else bool(c["removed"]), c["accused"], c["wall_s"],
          (c["detail"] or {}).get("reason") or (c["detail"] or {}).get("error") or ""] for c in cells], left=2))
    parts.append("</section>")

    parts.append("<section id='negatives'><h2>Negatives (independent models)</h2>")
    parts.append(_table(
        ["protection", "negative", "seed", "status", "accuracy", "owned", "score", "p-value", "queries",
         "innocents accused"],
        [[n["protection"], n["negative"], n["seed"], n["status"], n["accuracy"],
          None if n["owned"] is None else bool(n["owned"]), n["score"], n["p_value"], n["queries"],
          n["innocents_accused"]] for n in negatives], left=2))
    parts.append("</section>")

    parts.append("<section id='plot-accuracy'><h2>Accuracy vs attack strength</h2>"
                 + _plots_vs_strength(cells, "acc", "attacked test accuracy") + "</section>")
    parts.append("<section id='plot-detection'><h2>Detection vs attack strength</h2>"
                 + _plots_vs_strength(cells, "owned", "detected (owned / lock held)") + "</section>")
    parts.append("<section id='plot-scores'><h2>Score distributions: positives vs negatives</h2>"
                 + _plot_scores(cells, negatives) + "</section>")
    parts.append("</body></html>")
    return write_atomic(out_html, "".join(parts), force=True)
