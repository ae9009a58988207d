"""Attacks aimed at the API watermark (issue 38, item 2): each is registered as an extraction attack, runs
through a guarded Suspect of an MLP and a CNN owner with its cost recorded, and the guard's log judges it."""

from __future__ import annotations

import pytest
import torch

import modelseal as ms
from modelseal import attacks
from modelseal import guard as g
from modelseal.guard import GuardedAPI
from modelseal.suspect import Suspect

NEW = ("vote", "smooth-labels", "ensemble-distill", "adv-student")


@pytest.fixture(scope="module")
def digits():
    return ms.data.load("digits", seed=0)


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def owner(request, digits):
    m = ms.models.build(request.param, digits.meta, seed=0)
    ms.train.fit(m, digits.owner, epochs=4, seed=0, progress=False)
    return m.eval()


def test_the_attacks_are_registered_as_extraction():
    fams = attacks.by_family()
    for name in NEW:
        assert name in attacks.names() and name in fams["extraction"], name
        assert attacks.get(name).takes_suspect
    assert attacks.get("ensemble-distill").copies == 2


@pytest.mark.parametrize("name", NEW)
def test_each_attack_runs_through_a_guarded_api(name, owner, digits, tmp_path):
    key = g.GuardKey.new(10, rate=0.2)
    guard = g.Guard(key, tmp_path)
    shape = tuple(digits.meta.input_shape)
    api = Suspect(GuardedAPI(owner, guard, "thief"), input_shape=shape)
    attack = attacks.get(name)(queries=120, epochs=2, student="mlp", seed=1)
    if name == "ensemble-distill":
        run = attack.run_many([api, Suspect(owner, input_shape=shape)], digits.attacker)
        with pytest.raises(attacks.AttackError, match="apply_many"):
            attack.apply(api, digits.attacker)
    else:
        run = attack.run(api, digits.attacker)
    per_input = 5 if name == "vote" else 1
    want = 120 * per_input + (120 if name == "ensemble-distill" else 0)
    assert run.cost["queries"] == want and run.cost["examples"] == 120 and run.cost["wall_s"] > 0, run.cost
    student = run.model.eval()
    assert student(digits.test.x[:4]).shape == (4, 10)
    assert guard.log_path("thief").exists()  # a rate of 0.2 changes some of 120+ answers
    v = g.verify(student, key, guard.log_path("thief"))
    assert 0 <= v.details["matches"] <= v.details["entries"]


def test_vote_keeps_the_majority_of_the_copies(digits, tmp_path):
    """Voting over noisy copies outvotes the keyed answers: the labels it trains on agree with the
    unguarded model's more often than the served answers do."""
    m = ms.models.build("mlp", digits.meta, seed=0)
    ms.train.fit(m, digits.owner, epochs=6, seed=0, progress=False)
    m.eval()
    key = g.GuardKey.new(10, rate=0.3)
    guard = g.Guard(key, tmp_path)
    shape = tuple(digits.meta.input_shape)
    api = Suspect(GuardedAPI(m, guard, "c"), input_shape=shape)
    attack = attacks.get("vote")(queries=300, copies_per_input=7, sigma=0.05, epochs=1, student="mlp")
    attack.__dict__["_usage"] = {"examples": 0, "queries": 0}  # select() outside run(): record its queries
    try:
        x, voted = attack.select(api, digits.attacker.x, digits.meta)
    finally:
        attack.__dict__.pop("_usage", None)
    with torch.no_grad():
        plain = m(x).argmax(1)
    served = api.predict(x).argmax(1)
    assert (voted.argmax(1) == plain).float().mean() > (served == plain).float().mean()
