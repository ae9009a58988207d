"""What the rows of a bench run mean: the one set of rules behind every word the HTML report, `modelseal
bench report` and `modelseal demo` print, so that they cannot disagree. Rendering (HTML, plots, the terminal
table) lives in `report.py`; it prints what these functions decide and decides nothing itself.

Per cell (`cell_outcome`):

- watermarks and fingerprints (judged with a p-value at significance level alpha): `detected` when the
  verdict says owned; `REMOVED` only when an attack ran, the *unattacked* protected model of the same
  protection and seed was detected, the attacked model is not, and its accuracy stayed within 5 points
  of the owner's (`REMOVAL_MARGIN`); `not detected, model damaged` when the verdict flipped but the attack
  cost more accuracy than that; `never detected` for every cell of a protection whose unattacked model
  was not judged owned (nothing was there to remove);
- per-user fingerprints (DeepMarks): `traced` when someone was accused and nobody innocent; `FRAMED` when
  an innocent user was accused; collusion cells past the code's bound (more colluders than the code
  guarantees to trace: the `max_colluders` of the verdict, else the method's `collusion_bound` of its key
  the store recorded) are labelled so;
- locks: `held` while the attacked model's accuracy stays at least `LOCK_HELD_MARGIN` (50 points) below
  the owner's, else `RECOVERED` (a lock that leaves a thief a usable model has failed even if accuracy
  stays a few points lower).

Per negative (`negative_outcome`): `OWNED` / `not owned` (per-user: `accused [...]` / `nobody accused`), or
the row's status.

Per protection (`survival`): the verdict in words, the attacks that removed it and those it survived, and
**the cheapest attack that removed it** (`cheapest_removal`). Cost order (`cost_key`), cheapest first: the
fraction of the attacker's data the attack used, then the queries it sent to the protected model, then the
attack's own wall time (the one volatile part: two attacks equal on data and queries can swap between
runs), then the attack's text. Data before queries because labelled data is what a thief has least of;
wall time last because it depends on the machine. Only removals within the guarantee count (collusion past
a code's bound does not); for locks, the cheapest attack that recovered it.

Alpha is the one recorded in the row (`alpha` column), else the library default (`DEFAULT_ALPHA`).

A partial run (cells or negatives that the run planned but did not finish: `max_cells`, an interrupt) says so
(`completeness`), and in every row it concerns: a protection with unfinished cells gets "PARTIAL: k of n cells
run" in its verdict, and one with no finished cell appears as "not run" (`partial_rows`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..attacks import CHAIN
from ..errors import ModelSealError
from ..verdict import DEFAULT_ALPHA
from .store import REMOVAL_MARGIN, Store

LOCK_HELD_MARGIN = 0.5  # a lock holds only while the attacked accuracy stays >= 50 points below the owner's
COST_ORDER = ("data_fraction", "queries", "attack_wall_s")  # cheapest first, in this order (see above)

Row = dict[str, Any]


def _owned(c: dict[str, Any]) -> bool:
    return bool(c.get("owned"))


def alpha_of(row: dict[str, Any]) -> float:
    """The significance level of a verdict row: recorded, or for traced rows 10^-threshold, or the default."""
    if row.get("alpha") is not None:
        return float(row["alpha"])
    if row.get("family") == "per-user" and row.get("threshold") is not None:
        return 10.0 ** (-float(row["threshold"]))
    return DEFAULT_ALPHA


def attack_text(c: dict[str, Any]) -> str:
    """The attack of a cell with all its parameters, e.g. `finetune (mode=ftal, epochs=2)`."""
    if c.get("attack_name") in (None, "none") or c.get("attack") == "none":
        return "no attack"
    base = str(c["attack"]).split(" ")[0]
    params = c.get("attack_params") or {}
    steps = params.get("steps") if c.get("attack_name") == CHAIN else None
    if isinstance(steps, list):  # a chained attack: its steps in order, each with its parameters
        inner = " -> ".join(attack_text({"attack": s.get("attack"), "attack_name": s.get("attack"),
                                         "attack_params": s.get("params")}) for s in steps if isinstance(s, dict))
        return f"{base}: {inner}"
    inner = ", ".join(f"{k}={v}" for k, v in params.items() if k not in ("seed", "others", "progress"))
    return f"{base} ({inner})" if inner else base


def _collusion_size(c: dict[str, Any]) -> int:
    return len(c.get("colluders") or []) or 1


def cell_outcome(c: dict[str, Any], baseline_detected: bool | None, bound: int | None = None,
                 lock_margin: float = LOCK_HELD_MARGIN) -> dict[str, Any]:
    """What one cell shows: {word, removed, kind, note}. `baseline_detected`: whether the unattacked protected
    model of the same protection and seed was detected (None when that cell is missing)."""
    attacked = c.get("attack_name") not in (None, "none")
    if c.get("status") != "ok":
        reason = (c.get("detail") or {}).get("reason") or (c.get("detail") or {}).get("error") or ""
        return {"word": c.get("status", "?"), "removed": False, "kind": "not-judged", "note": reason}
    owner, acc = c.get("owner_acc"), c.get("attacked_acc")
    if c.get("family") == "lock":
        held = owner is not None and acc is not None and acc <= owner - lock_margin
        word = ("held" if attacked else "locked") if held else ("RECOVERED" if attacked else "NOT LOCKED")
        note = "" if held or owner is None or acc is None else f"accuracy {acc:.3f} vs owner {owner:.3f}"
        return {"word": word, "removed": attacked and not held, "kind": "held" if held else "removed", "note": note}
    note = ""
    past_bound = bound is not None and c.get("family") == "per-user" and _collusion_size(c) > bound
    if past_bound:
        note = f"{_collusion_size(c)} colluders: past the code's bound of {bound}"
    if c.get("family") == "per-user" and (c.get("innocents_accused") or 0) > 0:
        return {"word": "FRAMED an innocent user", "removed": False, "kind": "framed", "note": note}
    if _owned(c):
        word = "traced" if c.get("family") == "per-user" else "detected"
        if c.get("family") == "per-user" and c.get("colluders"):
            word += f" ({c.get('colluders_found') or 0} of {_collusion_size(c)} found)"
        return {"word": word, "removed": False, "kind": "detected", "note": note}
    if not attacked:
        return {"word": "never detected", "removed": False, "kind": "never",
                "note": note or "not judged owned even unattacked, so no attack can remove it"}
    if baseline_detected is False:
        return {"word": "never detected", "removed": False, "kind": "never", "note": note}
    if owner is not None and acc is not None and acc < owner - REMOVAL_MARGIN:
        return {"word": "not detected, model damaged", "removed": False, "kind": "damaged",
                "note": (note + "; " if note else "") + f"accuracy {acc:.3f} < owner {owner:.3f} - 0.05"}
    return {"word": "REMOVED", "removed": True, "kind": "past-bound" if past_bound else "removed", "note": note}


def ordered(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells grouped by protection, the unattacked one first, then attacks by name and strength."""
    return sorted(cells, key=lambda c: (c["protection"], c.get("attack_name") != "none", c.get("attack_name") or "",
                                        c.get("strength") if c.get("strength") is not None else -1.0,
                                        str(c.get("attack")), c.get("seed") or 0))


def _collusion_bound(method: str, key_params: dict[str, Any]) -> int | None:
    """The per-user method's own collusion bound for a key (None when the method is not installed here)."""
    from .. import methods
    from ..errors import RegistryError
    from ..methods.base import PerUser

    try:
        cls = methods.get(method)
    except RegistryError:
        return None
    return cls.collusion_bound(key_params) if issubclass(cls, PerUser) else None


def _bounds(cells: list[dict[str, Any]], keys: dict[str, dict[str, Any]]) -> dict[str, int | None]:
    """The collusion bound per per-user protection: from a verdict's `max_colluders`, else its key's k - 1."""
    out: dict[str, int | None] = {}
    for c in cells:
        if c.get("family") != "per-user":
            continue
        b = (c.get("detail") or {}).get("max_colluders")
        if b is None and c.get("method") is not None:  # not judged: the method's bound from its key
            b = _collusion_bound(str(c["method"]), keys.get(c["protection"], {}))
        if b is not None:
            out[c["protection"]] = int(b)
        else:
            out.setdefault(c["protection"], None)
    return out


def outcomes(cells: list[dict[str, Any]], keys: dict[str, dict[str, Any]] | None = None,
             lock_margin: float = LOCK_HELD_MARGIN) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(cell, outcome) for every cell, in `ordered` order."""
    base = {(c["protection"], c.get("seed")): _owned(c) if c.get("family") != "lock" else True
            for c in cells if c.get("attack_name") == "none" and c.get("status") == "ok"}
    bounds = _bounds(cells, keys or {})
    return [(c, cell_outcome(c, base.get((c["protection"], c.get("seed"))), bounds.get(c["protection"]),
                             lock_margin)) for c in ordered(cells)]


def cost_text(before: float | None, after: float | None, what: str = "accuracy") -> str:
    """An accuracy change in words a reader cannot misread: a cost only when accuracy fell, e.g.
    `0.4 points lost (0.924 -> 0.920)` or `none: accuracy rose 2.4 points (0.923 -> 0.947)`."""
    if before is None or after is None:
        return "–"
    d = 100 * (after - before)
    span = f"({before:.3f} -> {after:.3f})"
    if round(d, 1) == 0:
        return f"none: {what} unchanged {span}"
    if d < 0:
        return f"{-d:.1f} points lost {span}"
    return f"none: {what} rose {d:.1f} points {span}"


def _never_note(items: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """Why an unattacked protected model was not judged owned, from its verdict's details: its p-value, and
    the reference models a reference-calibrated null had (few references cannot give a small p-value)."""
    base = [c for c, _ in items if c.get("attack_name") == "none" and c.get("status") == "ok"]
    if not base:
        return ""
    c = base[0]
    d = c.get("detail") or {}
    parts = []
    if c.get("p_value") is not None:
        parts.append(f"its p-value was {float(c['p_value']):.2g}")
    if d.get("not_judged"):
        parts.append(f"not judged: {str(d['not_judged']).split(';')[0]}")
    elif isinstance(d.get("references"), int):
        r = d["references"]
        parts.append(f"judged against {r} reference model{'s' if r != 1 else ''}; with so few the smallest "
                     "reachable p-value stays far above alpha, so give more reference models" if r < 10 else
                     f"judged against {r} reference models")
    return "; ".join(parts)


def survival(cells: list[dict[str, Any]], negatives: list[dict[str, Any]],
             keys: dict[str, dict[str, Any]] | None = None,
             lock_margin: float = LOCK_HELD_MARGIN) -> list[dict[str, Any]]:
    """Per protection, in plain words: what survived, what removed it (with parameters), at what alpha and
    accuracy cost. The one decision behind the HTML headline, `bench report` and the demo's summary."""
    by_prot: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for c, o in outcomes(cells, keys, lock_margin):
        by_prot[c["protection"]].append((c, o))
    negs = defaultdict(list)
    for n in negatives:  # independent models only: relatives of the owner are `threats`' own row
        if n.get("status") == "ok" and not is_relative(n):
            negs[n["protection"]].append(n)
    rows = []
    for prot, items in by_prot.items():
        first = items[0][0]
        fam = first["family"]
        attacked = [(c, o) for c, o in items if c.get("attack_name") != "none" and o["kind"] != "not-judged"]
        removed = [(c, o) for c, o in attacked if o["removed"]]
        in_bound_removed = [(c, o) for c, o in removed if o["kind"] != "past-bound"]
        past_bound = [(c, o) for c, o in removed if o["kind"] == "past-bound"]
        survived = [(c, o) for c, o in attacked if not o["removed"] and o["kind"] != "never"]
        damaged = [(c, o) for c, o in survived if o["kind"] == "damaged"]
        never = any(o["kind"] == "never" for _, o in items)
        framed = sum(o["kind"] == "framed" for _, o in items)
        owner = mean([c.get("owner_acc") for c, _ in items if c.get("status") == "ok"])
        prot_acc = mean([c.get("protected_acc") for c, _ in items if c.get("status") == "ok"])
        unlocked = mean([c.get("unlocked_acc") for c, _ in items if c.get("status") == "ok"])
        if fam == "lock":
            cost = None if unlocked is None or owner is None else unlocked - owner
            text = f"unlocked: {cost_text(owner, unlocked)}; locked accuracy {fmt(prot_acc)}"
        else:
            cost = None if prot_acc is None or owner is None else prot_acc - owner
            text = cost_text(owner, prot_acc)
        alphas = sorted({alpha_of(c) for c, _ in items if fam != "lock"})
        n_att = len(attacked)
        if fam == "lock":
            base_locked = all(o["kind"] == "held" for c, o in items if c.get("attack_name") == "none")
            if not base_locked:
                verdict = "did not lock: the locked model stays usable"
            elif removed:
                verdict = f"recovered by {len(removed)} of {n_att} attacks"
            else:
                verdict = f"held against all {n_att} attacks"
        elif never:
            why = _never_note(items)
            verdict = ("never detected: the unattacked protected model was not judged owned at alpha "
                       f"{alpha_text(alphas)}" + (f" ({why})" if why else ""))
        elif in_bound_removed:
            verdict = f"removed by {len(in_bound_removed)} of {n_att} attacks"
            if past_bound:
                verdict += f" (and by {len(past_bound)} more past the code's bound)"
        elif removed:
            verdict = f"survived every attack within its guarantee ({n_att - len(removed)} of {n_att})"
        elif damaged:
            verdict = f"survived {n_att - len(damaged)} of {n_att} attacks"
        else:
            verdict = f"survived all {n_att} attacks"
        if damaged and not never and fam != "lock":
            verdict += (f"; {len(damaged)} more left it undetected but cost the model more than "
                        f"{100 * REMOVAL_MARGIN:.0f} points of accuracy")
        if framed:
            verdict += f"; FRAMED innocent users in {framed} cells"
        best = cheapest([c for c, _ in (removed if fam == "lock" else in_bound_removed)])
        neg_acc = [n for n in negs.get(prot, []) if n.get("owned")]
        rows.append({
            "protection": prot, "method": first["method"], "family": fam, "verdict": verdict,
            "status": ("never" if never else "removed" if (in_bound_removed or (fam == "lock" and removed))
                       else "survived"),
            "removed_by": [attack_text(c) + (f" [{o['note']}]" if o["note"] else "") for c, o in removed],
            "survived": [attack_text(c) + f" [{o['word']}]" for c, o in survived],
            "cheapest_removal": None if best is None else f"{attack_text(best)}: {cost_words(best)}",
            "alpha": None if fam == "lock" else (alphas[0] if len(alphas) == 1 else alphas),
            "rule": (f"held = attacked accuracy at least {100 * lock_margin:.0f} points below the owner's"
                     if fam == "lock" else "owned = p-value <= alpha; removed = not owned while accuracy stays "
                     f"within {100 * REMOVAL_MARGIN:.0f} points of the owner's"),
            "accuracy_cost": cost, "accuracy_cost_text": text,
            "owner_acc": owner, "protected_acc": prot_acc,
            "false_positives": None if fam == "lock" else f"{len(neg_acc)} of {len(negs.get(prot, []))}",
        })
    return rows


RELATIVE_KINDS = ("sibling", "base")  # negatives related to the owner through a public base (bench.scenario)
API_THREAT = "stolen through the API"
RELATIVE_THREAT = "innocent relative: siblings of the public base"


def is_relative(n: Row) -> bool:
    """Whether a negative row is a relative of the owner (a sibling fine-tuned from the owner's public base, or
    the base itself) rather than an independent model (rows of older databases have no kind: independent)."""
    return n.get("kind") in RELATIVE_KINDS


def _attack_family(name: Any) -> str | None:
    from .. import attacks

    return attacks.FAMILIES.get(str(name)) if name is not None else None


def is_extraction(c: Row) -> bool:
    """Whether a cell's model was stolen through the API: its attack (or a step of its chain) is of the
    extraction family, so the thief trained a student on the protected model's answers."""
    if c.get("attack_name") in (None, "none"):
        return False
    if c.get("attack_name") == CHAIN:
        steps = (c.get("attack_params") or {}).get("steps") or []
        return any(isinstance(st, dict) and _attack_family(st.get("attack")) == "extraction" for st in steps)
    return _attack_family(c.get("attack_name")) == "extraction"


def _p_text(r: Row) -> str:
    d = r.get("detail") or {}
    if d.get("not_applicable"):
        return "key does not apply"
    if d.get("score_only") or d.get("not_judged"):
        return "score-only: never accuses"
    return "no p-value" if r.get("p_value") is None else f"p {float(r['p_value']):.2g}"


def _acc_text(c: Row) -> str:
    if c.get("attacked_acc") is None or c.get("owner_acc") is None:
        return ""
    return f"; accuracy {float(c['attacked_acc']):.3f}, owner {float(c['owner_acc']):.3f}"


def threats(cells: list[Row], negatives: list[Row]) -> list[Row]:
    """The headline's threat rows (DESIGN.md section 7), each {threat, note, by_protection: {label: {found,
    total, text}}}:

    - "stolen through the API": per protection, how many of the run's extraction students (`is_extraction`
      cells: knockoff, distill, a chain with an extraction step, ...) its verdict still owned at alpha, with each
      student's p-value and accuracy (a student more than 5 points below the owner is a damaged one); "no
      extraction attack in this run" when there is none. Protections of the lock family are left out (no
      verdict).
    - "innocent relative: siblings of the public base" (runs with siblings only): per protection, how many
      siblings its verdict accused and whether it owned the base itself. An accusation here is a false one."""
    prots = sorted({c["protection"] for c in cells if c.get("family") != "lock"}
                   | {n["protection"] for n in negatives if n.get("family") != "lock"})
    api: dict[str, Row] = {}
    for prot in prots:
        studs = [c for c in cells if c["protection"] == prot and c.get("status") == "ok" and is_extraction(c)]
        found = [c for c in studs if _owned(c)]
        if not studs:
            text = "no extraction attack in this run"
        else:
            text = (f"found {len(found)} of {len(studs)}: " + "; ".join(
                f"{attack_text(c)}: {'found' if _owned(c) else 'missed'} ({_p_text(c)}{_acc_text(c)})"
                for c in ordered(studs)))
        api[prot] = {"found": len(found), "total": len(studs), "text": text}
    rows: list[Row] = [{"threat": API_THREAT, "by_protection": api,
                        "note": "a student trained on the protected model's answers; the API watermark "
                                "(modelseal.guard) is not a bench protection yet, so its row is measured by "
                                "benchmarks/guard.py, not here"}]
    rel = [n for n in negatives if n.get("status") == "ok" and is_relative(n)]
    if rel:
        by: dict[str, Row] = {}
        for prot in prots:
            sibs = [n for n in rel if n["protection"] == prot and n.get("kind") == "sibling"]
            base = [n for n in rel if n["protection"] == prot and n.get("kind") == "base"]
            acc = [n for n in sibs if _owned(n)]
            text = f"accused {len(acc)} of {len(sibs)} siblings"
            if acc:
                text += " (" + ", ".join(_p_text(n) for n in acc[:5]) + (", ..." if len(acc) > 5 else "") + ")"
            if base:
                text += f"; the public base {'OWNED' if _owned(base[0]) else 'not owned'} ({_p_text(base[0])})"
            by[prot] = {"found": len(acc), "total": len(sibs), "text": text,
                        "base_owned": bool(base and _owned(base[0])) if base else None}
        rows.append({"threat": RELATIVE_THREAT, "by_protection": by,
                     "note": "innocent parties that fine-tuned the owner's public base on their own data: every "
                             "accusation is a false one (relatedness is not theft)"})
    return rows


def alpha_text(alpha: Any) -> str:
    if alpha is None:
        return "–"
    if isinstance(alpha, list):
        return ", ".join(f"{a:.0e}" for a in alpha)
    return f"{alpha:.0e}"


def cost_key(c: Row) -> tuple[float, int, float, str]:
    """Sort key of an attacked cell by its recorded cost (`COST_ORDER`), cheapest first; a cost not recorded
    (older databases) sorts last."""
    cost = c.get("cost") or {}
    data, queries, wall = cost.get("data_fraction"), cost.get("queries"), c.get("attack_wall_s")
    return (math.inf if data is None else float(data), 2**62 if queries is None else int(queries),
            math.inf if wall is None else float(wall), attack_text(c))


def cost_words(c: Row) -> str:
    """A cell's recorded cost in words, e.g. `50% of the attacker's data, 1000 queries, 9.1 s; accuracy
    0.878 (owner 0.923)`."""
    cost = c.get("cost") or {}
    parts = []
    if "data_fraction" in cost:
        parts.append(f"{100 * float(cost['data_fraction']):.0f}% of the attacker's data")
    if "queries" in cost:
        parts.append(f"{int(cost['queries'])} queries")
    if c.get("attack_wall_s") is not None:
        parts.append(f"{float(c['attack_wall_s']):.1f} s")
    text = ", ".join(parts) or "cost not recorded"
    if c.get("attacked_acc") is not None and c.get("owner_acc") is not None:
        text += f"; accuracy {c['attacked_acc']:.3f} (owner {c['owner_acc']:.3f})"
    return text


def cheapest(cells: list[Row]) -> Row | None:
    """The cheapest of these attacked cells by `cost_key` (None when there are none)."""
    return min(cells, key=cost_key) if cells else None


def negative_outcome(n: Row) -> dict[str, str]:
    """What one independent model's verdict shows: {word, note}."""
    d = n.get("detail") or {}
    if n.get("status") != "ok":
        return {"word": str(n.get("status", "?")), "note": str(d.get("error", ""))}
    if n.get("family") == "per-user":
        word = ("accused " + str(n["accused"])) if n.get("accused") else "nobody accused"
    else:
        word = "OWNED" if n.get("owned") else "not owned"
    if n.get("p_value") is not None:
        note = f"p = {n['p_value']:.2g}"
    elif "not_applicable" in d:
        note = "key does not apply to this architecture"
    else:
        note = ""
    return {"word": word, "note": note}


def read_rows(db_path: str | Path) -> tuple[dict[str, str], list[Row], list[Row], list[Row], dict[str, Row]]:
    """(meta, cells, negatives, artifacts, key parameters by protection) of a results database."""
    from ..safeio import usable_path

    path = usable_path(db_path, what="results database")
    if not path.is_file():
        raise ModelSealError(f"results database {path} does not exist; run `modelseal bench run` first")
    with Store(path) as s:
        return s.meta(), s.cells(), s.negatives(), s.artifacts(), s.protection_params()


def survival_from_db(db_path: str | Path, lock_margin: float = LOCK_HELD_MARGIN) -> list[Row]:
    """`survival` of a results database, partial runs marked (`partial_rows`)."""
    meta, cells, negatives, _, keys = read_rows(db_path)
    return partial_rows(survival(cells, negatives, keys, lock_margin), completeness(meta, cells, negatives))


def completeness(meta: dict[str, str], cells: list[dict[str, Any]], negatives: list[dict[str, Any]]
                 ) -> dict[str, Any] | None:
    """What the run planned against what the database holds; None when the run is complete (or the database
    predates the `planned` record)."""
    try:
        planned = json.loads(meta.get("planned") or "null")
    except ValueError:
        planned = None
    if not isinstance(planned, dict) or not isinstance(planned.get("by_protection"), dict):
        return None
    have: dict[str, int] = defaultdict(int)
    for c in cells:
        have[c["protection"]] += 1
    by = {str(k): (min(have.get(k, 0), int(v)), int(v)) for k, v in planned["by_protection"].items()}
    done, total = sum(d for d, _ in by.values()), int(planned.get("cells", 0))
    negs, negs_total = len(negatives), int(planned.get("negatives", 0))
    if done >= total and negs >= negs_total:
        return None
    text = (f"PARTIAL RUN: {done} of {total} planned cells and {min(negs, negs_total)} of {negs_total} negative "
            f"verdicts are in the database ({total - done} cells not run); every result below covers only the "
            "finished part. Run `modelseal bench run` again on the same folder to finish it.")
    return {"cells": done, "planned_cells": total, "negatives": negs, "planned_negatives": negs_total,
            "by_protection": by, "text": text}


def partial_rows(rows: list[dict[str, Any]], part: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The survival rows of a partial run: each unfinished protection's verdict says how much of it ran, and
    a protection with no finished cell gets a "not run" row."""
    if part is None:
        return rows
    seen = {r["protection"] for r in rows}
    for r in rows:
        done, total = part["by_protection"].get(r["protection"], (0, 0))
        if done < total:
            r["verdict"] += f"; PARTIAL: {done} of {total} cells run"
            r["partial"] = True
    for label, (_done, total) in part["by_protection"].items():
        if label not in seen:
            rows.append({"protection": label, "method": None, "family": None, "status": "not-run",
                         "verdict": f"not run: 0 of {total} cells (partial run)", "removed_by": [], "survived": [],
                         "cheapest_removal": None,
                         "alpha": None, "rule": None, "accuracy_cost": None, "accuracy_cost_text": "–",
                         "false_positives": None, "partial": True})
    return rows



def fmt(v: Any, digits: int = 3) -> str:
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



def mean(xs: list[Any]) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


