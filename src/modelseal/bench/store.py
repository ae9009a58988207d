"""SQLite results store: one database (`results.sqlite`) per run directory, committed after every result,
so an interrupted run loses nothing that finished and a re-run skips what is already there.

Schema (all JSON columns hold JSON text; accuracies are fractions in [0, 1], or R^2 for regression):

- `meta(key TEXT PRIMARY KEY, value TEXT)`: `scenario` (the TOML text), `scenario_name`, `data`,
  `created`, `modelseal_version`, `schema_version`.
- `artifacts(artifact_id TEXT PRIMARY KEY, kind TEXT, label TEXT, info TEXT JSON, wall_s REAL)`: prepared
  models and keys: kind `owner`, `negative`, `reference`, `base` (the public base of a scenario with
  siblings) (info: spec, accuracy) and `protection`
  (info: protection label, method, family, seed, protected accuracy, unlocked accuracy for locks,
  number of copies for per-user methods, `key_params`: the JSON parameters of the protection's key, which
  the report reads here, never from the key files). Their weights and keys are cached next to the database in
  `cache/`; `protection_params()` gives the key parameters by protection label (none for databases written
  before they were recorded).
- `cells(cell_id TEXT PRIMARY KEY, ...)`: one row per protection x attack variant x seed. `cell_id` is a
  hash of the cell's parameters and the owner's spec. Columns: protection, method, family
  (watermark | fingerprint | per-user | lock: the registry's families), attack (label incl. swept values), attack_name,
  attack_params JSON, swept (name of the swept parameter or NULL), strength (its value), seed,
  status (`ok` | `skipped` | `error`), owner_acc, protected_acc, attacked_acc, unlocked_acc (locks),
  owned (0/1; for locks: the accuracy stays more than 5 points below the owner's), score, p_value,
  threshold, queries, removed (0/1: an attack ran, and not owned while attacked_acc >= owner_acc - 0.05),
  colluders JSON (per-user family: the users whose copies were attacked), accused JSON, colluders_found,
  innocents_accused, detail JSON (method details or the reason for skipped/error), wall_s, finished_at,
  alpha (the significance level the verdict used; NULL in databases written before it was recorded, and
  when the runner does not report it: readers then take the library default, `verdict.DEFAULT_ALPHA`),
  cost JSON (attacked cells: the attack's cost record, `modelseal.attacks`: examples, data_fraction,
  queries, owner_acc, attacked_acc, accuracy_delta, test_rejection_rate for query-side attacks, steps for
  chains; wall times left out; NULL in older databases and for unattacked cells), attack_wall_s (the
  attack's own wall time).
- `negatives(neg_id TEXT PRIMARY KEY, ...)`: one row per protection x seed x negative model: protection,
  method, family, seed, negative (label like `mlp#1`), arch, accuracy, status, owned, score, p_value,
  queries, accused JSON, innocents_accused, detail JSON, wall_s, finished_at, alpha, kind (`independent`,
  `student` of an independent model, or a relative of the owner: `sibling` of the public base, the `base`
  itself; NULL in older databases: independent). A key that cannot apply
  to the negative (another architecture) gives status `ok`, owned 0, no score or p-value and
  `detail.not_applicable` with the reason: no accusation is made.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

REMOVAL_MARGIN = 0.05  # an attack "removes" only while the attacked model keeps accuracy within 5 points


SCHEMA_VERSION = 1

CELL_COLUMNS = ["cell_id", "protection", "method", "family", "attack", "attack_name", "attack_params", "swept",
                "strength", "seed", "status", "owner_acc", "protected_acc", "attacked_acc", "unlocked_acc",
                "owned", "score", "p_value", "threshold", "queries", "removed", "colluders", "accused",
                "colluders_found", "innocents_accused", "detail", "wall_s", "finished_at", "alpha", "cost",
                "attack_wall_s"]
NEG_COLUMNS = ["neg_id", "protection", "method", "family", "seed", "negative", "arch", "accuracy", "status",
               "owned", "score", "p_value", "queries", "accused", "innocents_accused", "detail", "wall_s",
               "finished_at", "alpha", "kind"]
# Columns added after schema version 1 was first written: (table, column, SQL type). Opening an older
# database adds them (NULL in old rows), so old run folders still resume and report.
ADDED_COLUMNS = [("cells", "alpha", "REAL"), ("negatives", "alpha", "REAL"), ("cells", "cost", "TEXT"),
                 ("cells", "attack_wall_s", "REAL"), ("negatives", "kind", "TEXT")]
JSON_COLUMNS = {"attack_params", "colluders", "accused", "detail", "info", "cost"}
# Columns that legitimately differ between two runs of the same scenario.
VOLATILE = {"wall_s", "finished_at", "attack_wall_s"}

_DDL = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS artifacts (artifact_id TEXT PRIMARY KEY, kind TEXT, label TEXT, info TEXT,
                                      wall_s REAL);
CREATE TABLE IF NOT EXISTS cells ({", ".join(c + (" TEXT PRIMARY KEY" if c == "cell_id" else "")
                                              for c in CELL_COLUMNS)});
CREATE TABLE IF NOT EXISTS negatives ({", ".join(c + (" TEXT PRIMARY KEY" if c == "neg_id" else "")
                                                  for c in NEG_COLUMNS)});
"""


def _enc(col: str, v: Any) -> Any:
    if col in JSON_COLUMNS:
        return None if v is None else json.dumps(v, sort_keys=True, default=str)
    if isinstance(v, bool):
        return int(v)
    return v


def _dec(col: str, v: Any) -> Any:
    if col in JSON_COLUMNS and v is not None:
        return json.loads(v)
    return v


class Store:
    """The results database of one run directory."""

    def __init__(self, path: str | Path):
        from ..errors import ModelSealError

        self.path = Path(path)
        if self.path.exists():
            self._check_existing()
        try:
            self.db = sqlite3.connect(str(self.path))
            self.db.executescript(_DDL)
            for table, col, kind in ADDED_COLUMNS:
                have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})").fetchall()}
                if col not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {col} {kind}")
            self.db.commit()
        except sqlite3.DatabaseError as e:
            raise ModelSealError(f"{self.path} is not a modelseal results database ({e}); "
                                 "choose another run directory or pass --force") from None
        if self.get_meta("schema_version") is None:
            self.set_meta("schema_version", str(SCHEMA_VERSION))

    def _check_existing(self) -> None:
        """Refuse, without changing it, an existing file that is not a modelseal results database (an empty
        file included): writing the schema into it would damage a user's file, and reporting on it would
        write an empty report as if a run had finished."""
        from ..errors import ModelSealError

        def bad(why: str) -> ModelSealError:
            return ModelSealError(f"{self.path} is not a modelseal results database ({why}); give the "
                                  "results.sqlite of a `modelseal bench run`, or start a new run directory")

        if self.path.is_dir():
            raise bad("it is a directory")
        if self.path.stat().st_size == 0:
            raise bad("the file is empty")
        try:
            ro = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True)
            try:
                tables = {r[0] for r in ro.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            finally:
                ro.close()
        except sqlite3.Error as e:
            raise bad(str(e)) from None
        if not tables & {"meta", "cells"}:  # databases of older modelseal versions may lack `meta`
            raise bad("it has neither a meta nor a cells table")
        self._check_families(tables & {"cells", "negatives"})

    def _check_families(self, tables: set[str]) -> None:
        """Refuse a database whose rows name a family the method registry does not know (modelseal before
        the registry's families named the protection family, not the method): its outcomes cannot be read."""
        from ..errors import ModelSealError
        from ..methods import FAMILIES

        ro = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            found = {r[0] for t in sorted(tables) for r in ro.execute(f"SELECT DISTINCT family FROM {t}")}
        except sqlite3.Error:
            found = set()
        finally:
            ro.close()
        unknown = sorted(str(f) for f in found - set(FAMILIES) - {None})
        if unknown:
            raise ModelSealError(f"{self.path} was written by an older modelseal (family {', '.join(unknown)} is not "
                                 f"one of {', '.join(FAMILIES)}); run the scenario again into a new run directory")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ meta / artifacts
    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        self.db.commit()

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def meta(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM meta").fetchall())

    def put_artifact(self, artifact_id: str, kind: str, label: str, info: dict[str, Any], wall_s: float) -> None:
        self.db.execute("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?)",
                        (artifact_id, kind, label, json.dumps(info, sort_keys=True, default=str), wall_s))
        self.db.commit()

    def artifact(self, artifact_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT kind, label, info, wall_s FROM artifacts WHERE artifact_id = ?",
                              (artifact_id,)).fetchone()
        if row is None:
            return None
        return {"kind": row[0], "label": row[1], "info": json.loads(row[2]), "wall_s": row[3]}

    def artifacts(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT artifact_id, kind, label, info, wall_s FROM artifacts ORDER BY kind, label")
        return [{"artifact_id": r[0], "kind": r[1], "label": r[2], "info": json.loads(r[3]), "wall_s": r[4]}
                for r in rows.fetchall()]

    def protection_params(self) -> dict[str, dict[str, Any]]:
        """The key parameters recorded for each protection (by label) when it was made."""
        out: dict[str, dict[str, Any]] = {}
        for a in self.artifacts():
            params = a["info"].get("key_params") if a["kind"] == "protection" else None
            if isinstance(params, dict):
                out[str(a["info"].get("protection", a["label"]))] = params
        return out

    # ------------------------------------------------------------------ results
    def _put(self, table: str, cols: list[str], row: dict[str, Any]) -> None:
        row = {**row, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.db.execute(f"INSERT OR REPLACE INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                        [_enc(c, row.get(c)) for c in cols])
        self.db.commit()

    def put_cell(self, row: dict[str, Any]) -> None:
        self._put("cells", CELL_COLUMNS, row)

    def put_negative(self, row: dict[str, Any]) -> None:
        self._put("negatives", NEG_COLUMNS, row)

    def done_cells(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT cell_id FROM cells").fetchall()}

    def done_negatives(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT neg_id FROM negatives").fetchall()}

    def _rows(self, table: str, cols: list[str], order: str) -> list[dict[str, Any]]:
        rows = self.db.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}").fetchall()
        return [{c: _dec(c, v) for c, v in zip(cols, r, strict=False)} for r in rows]

    def cells(self) -> list[dict[str, Any]]:
        return self._rows("cells", CELL_COLUMNS, "protection, attack_name, strength, attack, seed")

    def negatives(self) -> list[dict[str, Any]]:
        return self._rows("negatives", NEG_COLUMNS, "protection, seed, negative")
