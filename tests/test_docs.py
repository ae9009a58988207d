"""The docs site builds with warnings as errors, and its CLI reference is the live `--help`.

The code blocks of the pages run in tests/test_readme.py (after the README's, in one folder).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link, a page missing from the nav's files, an API entry mkdocstrings
    cannot resolve or a docstring it cannot parse is an error, not a warning."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                        "--site-dir", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    site = tmp_path / "site"
    api = (site / "api" / "index.html").read_text()
    for name in ("api.verify", "suspect.Suspect", "keys.Key", "verdict.Verdict", "registry.Registry.get",
                 "attacks.Attack", "train.fit", "data.load", "models.build", "lineage.lineage"):
        assert f'id="modelseal.{name}"' in api, f"the API reference lacks modelseal.{name}"
    assert "Holm" in api  # verify's docstring itself, not only its heading
    assert "Usage: modelseal verify" in (site / "cli" / "index.html").read_text()


def test_cli_reference_is_the_live_help():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_cli
    finally:
        sys.path.remove(str(ROOT / "docs"))
    current = gen_cli.PAGE.read_text()
    assert gen_cli.MARKER in current
    assert current == gen_cli.page(current), "docs/cli.md is not the live --help: run `python docs/gen_cli.py`"
    for command in ("modelseal train", "modelseal verify", "modelseal fingerprint extract", "modelseal bench arena"):
        assert f"`{command}`" in current and f"Usage: {command} " in current, command
