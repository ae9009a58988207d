"""Shared fixtures: embedded data and trained models, trained once per test session.

Models are trained with fixed seeds so every test sees the same owner and the same independent
models. `owner_cnn` and friends are returned as fresh deep copies, so a test may change them freely.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

import modelseal as ms

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    # Keep the parsed-data cache of the developer's machine if there is one; CI starts clean either way.
    os.environ.setdefault("MODELSEAL_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield


@pytest.fixture(scope="session", autouse=True)
def _reproducible_secret_seeds():
    """Methods made without a seed draw a fresh one from the OS (`schema.fresh_seed`); the suite's fixtures and
    expected numbers were measured with seed 0, so in-process tests get 0. A test of the fresh draw itself asks
    for `fresh_seeds`. (CLI subprocesses and `--seed`-less commands still draw from the OS.)"""
    from modelseal import schema

    real = schema.fresh_seed
    schema.fresh_seed = lambda: 0
    yield
    schema.fresh_seed = real


@pytest.fixture
def fresh_seeds(monkeypatch):
    """The real OS draw for one test (see `_reproducible_secret_seeds`)."""
    import secrets

    from modelseal import schema

    monkeypatch.setattr(schema, "fresh_seed", lambda: secrets.randbits(62))


@pytest.fixture(scope="session")
def mnist():
    return ms.data.load("mnist5k", seed=0)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits, split with seed 0 (a module may define its own `digits`, which wins)."""
    return ms.data.load("digits", seed=0)


@pytest.fixture(scope="session")
def _owner_cnn(mnist):
    model = ms.models.build("cnn", mnist.meta, seed=0)
    ms.train.fit(model, mnist.owner, epochs=5, seed=0, progress=False)
    return model


@pytest.fixture
def owner_cnn(_owner_cnn):
    """The owner's CNN: 5 epochs on the owner split (about 92 % test accuracy)."""
    return copy.deepcopy(_owner_cnn)


@pytest.fixture(scope="session")
def _independent(mnist):
    models = []
    for arch, seed in [("cnn", 1), ("cnn", 2), ("cnn", 3), ("mlp", 1), ("mlp", 2)]:
        m = ms.models.build(arch, mnist.meta, seed=100 + seed)
        ms.train.fit(m, mnist.attacker, epochs=5, seed=100 + seed, progress=False)
        models.append(m)
    return models


@pytest.fixture
def independent_models(_independent):
    """Five models trained independently on the attacker split: 3 CNN seeds and 2 MLP seeds."""
    return [copy.deepcopy(m) for m in _independent]
