"""The README runs as written, the way a user would run it.

All blocks run in README order in one empty temporary folder:
- a ```bash block runs in bash (`set -euo pipefail`) with the installed `modelseal` command on PATH;
- a ```python block runs in a fresh interpreter, unless its first line is `# continued from the block above`,
  in which case it is appended to the previous python block and they run together;
- a ```sh block holds install commands (make install / demo / test) and is not run here: this test runs on an
  installed checkout, and `make test` would run the suite inside itself.
Any other fence (or one without a language) fails the test: a README code block is either run or setup.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```[ \t]*$", re.S | re.M)
CONTINUES = "# continued from the block above"
RUN_LANGS = {"bash", "python"}


def blocks(text: str | None = None) -> list[tuple[str, str, int]]:
    """(language, code, line number) of every fenced block, in order."""
    text = README.read_text() if text is None else text
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def units(text: str | None = None) -> list[tuple[str, str, int]]:
    """What runs, in order: bash blocks one by one, python blocks joined with the ones that continue them."""
    out: list[tuple[str, str, int]] = []
    for lang, code, line in blocks(text):
        if lang == "python" and code.startswith(CONTINUES):
            assert out and out[-1][0] == "python", f"README line {line} continues no python block"
            out[-1] = ("python", out[-1][1] + "\n" + code, out[-1][2])
        elif lang in RUN_LANGS:
            out.append((lang, code, line))
    return out


def test_every_block_is_run_or_setup_and_setup_comes_first():
    found = blocks()
    assert found, "README has no code blocks"
    for lang, code, line in found:
        assert lang in RUN_LANGS | {"sh"}, f"README line {line}: a ```{lang} block is neither run nor setup"
        if lang == "sh":
            assert all(c.startswith("make ") for c in code.splitlines() if c.strip()), line
    text = README.read_text()
    assert "make demo" in text and "make test" in text and "make install" in text
    assert "modelseal train" in text.split("```bash")[1]  # the first thing run makes the owner model


def test_a_python_block_continues_only_when_it_says_so():
    text = ("```python\nx = 1\n```\n\n```python\n" + CONTINUES + "\nprint(x)\n```\n\n```python\nprint(2)\n```\n"
            "```bash\necho hi\n```\n")
    got = units(text)
    assert [(lang, line) for lang, _, line in got] == [("python", 1), ("python", 10), ("bash", 13)]
    assert "x = 1" in got[0][1] and "print(x)" in got[0][1] and "x = 1" not in got[1][1]
    with pytest.raises(AssertionError, match="continues no python block"):
        units("```bash\necho\n```\n```python\n" + CONTINUES + "\n```\n")


def _modelseal_on_path(tmp: Path) -> str:
    """PATH with the installed `modelseal` first (the console script next to this interpreter), else a shim."""
    bindir = Path(sys.executable).parent
    if not (bindir / "modelseal").is_file():
        bindir = tmp / ".bin"
        bindir.mkdir()
        shim = bindir / "modelseal"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m modelseal.cli "$@"\n')
        shim.chmod(0o755)
    return f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.mark.slow
def test_readme_runs_as_written(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": _modelseal_on_path(tmp_path), "COLUMNS": "160"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    assert shutil.which("modelseal", path=env["PATH"])
    timings = []
    for i, (lang, code, line) in enumerate(units()):
        t0 = time.perf_counter()
        if lang == "bash":
            cmd = ["bash", "-c", "set -euo pipefail\n" + code]
        else:
            script = tmp_path / f"readme_block_{i}_line_{line}.py"
            script.write_text(code)
            cmd = [sys.executable, str(script)]
        r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        timings.append((line, lang, round(time.perf_counter() - t0, 1)))
        assert r.returncode == 0, (f"README {lang} block at line {line} failed (exit {r.returncode}):\n{code}\n"
                                   f"--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}")
    print("README blocks (line, kind, seconds):", timings, "total", round(sum(t for *_, t in timings), 1))
    report = (work / "report.html").read_text()
    assert "What survived?" in report and (work / "pirated.onnx").is_file()
