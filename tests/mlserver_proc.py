"""Start and stop a real MLServer (the Open Inference Protocol server the interop tests talk to).

MLServer lives in its own virtual environment (`.venv-mlserver`, made by `make install`; or the executable
named by MODELSEAL_MLSERVER). A test writes its model folders into a repository folder, then
`with running(repo, names) as base:` starts `mlserver start REPO` on free loopback ports, waits (at most
120 s) until every named model answers ready, yields the base URL, and stops the server by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = "MLServer is not installed: `make install` creates .venv-mlserver (or set MODELSEAL_MLSERVER)"


def exe() -> Path | None:
    env = os.environ.get("MODELSEAL_MLSERVER")
    path = Path(env) if env else ROOT / ".venv-mlserver" / "bin" / "mlserver"
    return path if path.is_file() else None


def require() -> Path:
    """The MLServer executable, or the test is skipped with how to install it."""
    path = exe()
    if path is None:
        pytest.skip(SKIP)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _ready(url: str) -> bool:
    try:
        return get(url, 2)[0] == 200
    except OSError:
        return False


@contextlib.contextmanager
def running(repo: Path, names: list[str], timeout: float = 120.0) -> Iterator[str]:
    """Serve the model folders in `repo` (named `names`) with MLServer on 127.0.0.1; yields the base URL."""
    path = require()
    http_port, grpc_port = free_port(), free_port()
    (repo / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_endpoint": None,
        "parallel_workers": 0, "debug": False, "load_models_at_startup": True}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    log = open(repo / "mlserver.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(path), "start", str(repo)], cwd=repo, env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + timeout
        while not all(_ready(f"{base}/v2/models/{n}/ready") for n in names):
            if proc.poll() is not None:
                raise AssertionError(f"MLServer exited with {proc.returncode}: "
                                     f"{(repo / 'mlserver.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"MLServer not ready in {timeout:g} s: "
                                     f"{(repo / 'mlserver.log').read_text()[-3000:]}")
            time.sleep(0.25)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()
