"""The remote client against a faulty server (tests/fault_server.py, raw HTTP on 127.0.0.1).

For every fault: the inputs the server saw equal the queries the Suspect charged and never exceed the
budget; the call ends within its deadline plus one second; no prefix (4+ characters) of the bearer token
shows in any message or log, although the server echoes it in its error bodies.
"""

from __future__ import annotations

import logging
import re
import time

import pytest
import torch

from fault_server import FaultServer
from modelseal.errors import BudgetExceeded, SuspectError
from modelseal.suspect import Suspect
from modelseal.suspect.remote import mask_secret

TOKEN = "Zq7xK-secret-4d2e8a61f0c9b3e7"  # fake; its first 4 characters must never appear anywhere
DEADLINE = 1.5


def _no_token(*texts: str) -> None:
    for text in texts:
        assert TOKEN[:4] not in text, text


# (script, binary, budget, batch sent, expected outcome: "ok" or a regex of the error)
FAULTS = {
    "500-always": (["500"], False, 100, 4, r"failed after 3 attempts: HTTP 500 \(overloaded"),
    "503-then-200": (["503", "ok"], False, 100, 4, "ok"),
    "drop-after-processing": (["drop", "ok"], False, 100, 4, "ok"),
    "drop-always": (["drop"], False, 100, 4, r"failed after 3 attempts: connection dropped"),
    "500-then-drop": (["500", "drop"], False, 100, 4,
                      r"failed after 3 attempts: HTTP 500 \(overloaded.*; last: connection dropped"),
    "cut-body": (["cut", "ok"], True, 100, 4, "ok"),
    "trickle": (["trickle"], False, 100, 4, r"did not finish within the 1.5s deadline"),
    "garbage": (["garbage"], False, 100, 4, r"non-JSON"),
    "429-retry-after-0": (["429:0", "ok"], True, 100, 4, "ok"),
    "429-retry-after-3600": (["429:3600"], False, 100, 4, r"asked to retry after 3600s \(Retry-After\), past the"),
    "budget-stops-retries": (["500"], False, 10, 4, "budget of 10 would be exceeded"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_keeps_budget_deadline_and_token(fault, monkeypatch, caplog):
    script, binary, budget, n, outcome = FAULTS[fault]
    monkeypatch.setenv("MODELSEAL_TOKEN", TOKEN)
    with FaultServer(script, binary=binary) as server:
        s = Suspect.load(server.url, max_queries=budget, timeout=DEADLINE, retries=2, backoff=0.05)
        assert s._backend.binary is binary
        t0 = time.monotonic()
        message, error = "", None
        with caplog.at_level(logging.DEBUG):
            try:
                out = s.predict(torch.zeros(n, 2))
            except SuspectError as e:
                message, error = str(e) + repr(e), e
            else:
                assert torch.equal(out, torch.full((n, 3), 0.5))
        elapsed = time.monotonic() - t0
        if outcome == "ok":
            assert not message
        else:
            assert message and re.search(outcome, message), message
        assert server.seen == s.queries <= budget, (server.seen, s.queries)
        assert server.seen > 0
        assert elapsed <= DEADLINE + 1.0, elapsed
        assert server.auth_seen[0] == "Bearer " + TOKEN  # the token was sent...
        _no_token(message, caplog.text, repr(s), repr(s._backend))  # ...and never shown
    if fault == "budget-stops-retries":
        assert isinstance(error, BudgetExceeded)
        assert server.seen == 8  # two sends of 4; a third would pass 10


def test_retry_after_is_honoured_within_the_deadline(monkeypatch):
    with FaultServer(["429:1", "ok"]) as server:
        s = Suspect.load(server.url, timeout=4.0, retries=2, backoff=0.0)
        t0 = time.monotonic()
        s.predict(torch.zeros(3, 2))
        elapsed = time.monotonic() - t0
    assert 1.0 <= elapsed < 3.0
    assert server.seen == s.queries == 6


def test_deadline_counts_retries_and_waits():
    with FaultServer(["500"]) as server:
        s = Suspect.load(server.url, timeout=1.0, retries=50, backoff=0.2)
        t0 = time.monotonic()
        with pytest.raises(SuspectError, match=r"HTTP 500.*past the 1s deadline"):
            s.predict(torch.zeros(2, 2))
        assert time.monotonic() - t0 <= 1.0 + 1.0  # gives up before a wait that would pass the deadline
        assert server.seen == s.queries and 2 <= server.requests <= 4


def test_budget_exceeded_is_raised_before_sending():
    with FaultServer(["ok"]) as server:
        s = Suspect.load(server.url, max_queries=5)
        with pytest.raises(BudgetExceeded, match="budget of 5"):
            s.predict(torch.zeros(6, 2))
        assert server.seen == s.queries == 0
        s.predict(torch.zeros(5, 2))
        assert server.seen == s.queries == 5


@pytest.mark.parametrize("text", [
    f"auth: Bearer {TOKEN}", f"auth: Bearer {TOKEN[:4]}", f"x{TOKEN[:9]}y{TOKEN}{TOKEN[:5]}",
    f"{TOKEN[:3]}", "no secret here",
])
def test_mask_removes_every_prefix_of_four_or_more(text):
    masked = mask_secret(text, TOKEN)
    for k in range(4, len(TOKEN) + 1):
        assert TOKEN[:k] not in masked
    assert masked == text or "***" in masked
    assert mask_secret(text, None) == text
