"""Test-suite set-up: 4 fake CPU devices, skips that fail the run where every test must run, and torch seeded
for each test."""

import atexit
import os
import shutil
import sys
import tempfile

import pytest

# Must happen before jax is imported anywhere in the test process.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Many tests compile the same tiny programs (the same model, step and optimizer in several runs); XLA's
# compile time on CPU dominates them, so the session shares JAX's persistent cache (keyed by program). A fresh
# directory each run, made by the first process (xdist's workers and the CLI tests' subprocesses inherit it): tests
# reuse each other's compilations, and a run's time does not depend on what earlier runs left behind.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jtl-test-xla-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

_skipped: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    # `make test` (and so CI) sets JTL_FAIL_ON_SKIP=1: a parity test skipped because torch is missing
    # must fail the run, not pass it quietly.
    if _skipped and os.environ.get("JTL_FAIL_ON_SKIP") == "1":
        print(f"\nJTL_FAIL_ON_SKIP=1 and {len(_skipped)} test(s) were skipped: {_skipped}")
        session.exitstatus = 1


@pytest.fixture(autouse=True)
def _seeded_torch():
    """The parity tests draw inputs from torch's global generator: seeded for each test, so that a test's inputs
    (and its float32 rounding against the reference) do not depend on which tests ran before it in its worker."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(0)
