"""Robustness benchmark: scenarios (TOML) expanded into protection x attack x parameter x seed cells, run
in-process or on Ray, stored in SQLite, and summarised in one self-contained HTML report.

`run(scenario, out_dir, backend="local" | "ray", address=None, force=False, progress=None)` and
`report(db_path, out_html, force=False)` are what `modelseal bench run` / `bench report` call; `outcomes` holds
the rules behind every word the report, `bench report` and `demo` print.
"""

from __future__ import annotations

from .driver import run
from .report import report
from .scenario import Scenario, ScenarioError, load, parse

__all__ = ["run", "report", "load", "parse", "Scenario", "ScenarioError"]
