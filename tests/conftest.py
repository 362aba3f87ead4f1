"""Shared test set-up: tests (and module-scoped fixtures) run on one torch thread, and whatever a test does
to the thread count is undone after it, so no test runs with a count an earlier one left behind. A module
must not call ``torch.set_num_threads`` at import (that would leak into every later module)."""
from __future__ import annotations

import pytest
from foundation_helpers import one_thread


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread_per_module():
    """One thread while a module's module-scoped fixtures run (they start before any per-test fixture)."""
    with one_thread():
        yield


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread for the test (on a loaded 2-core box two OpenMP threads are many times slower);
    the count from before the test is restored after it."""
    with one_thread():
        yield
