"""Every random test draws from the ``rng`` fixture: a fresh seed per test, printed when
the test fails, and fixed by ``FASTCNN_TEST_SEED=<seed>`` to rerun a failure exactly."""

from __future__ import annotations

import os
import secrets

import numpy as np
import pytest

_SEED_KEY = pytest.StashKey[int]()


@pytest.fixture
def rng(request) -> np.random.Generator:
    seed = int(os.environ.get("FASTCNN_TEST_SEED") or secrets.randbits(63))
    request.node.stash[_SEED_KEY] = seed
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = item.stash.get(_SEED_KEY, None)
    if report.failed and seed is not None:
        report.sections.append(("random seed", f"rerun with FASTCNN_TEST_SEED={seed}"))
