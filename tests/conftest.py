"""Shared fixtures: deterministic seeds, and the hypothesis profile of the fuzz suites.

The fuzz suites (tests/test_fuzz_*.py) run derandomized with no example database, so every run
tries the same generated inputs: a failure in CI reproduces with the same command. Their budget
is `max_examples=fuzz_examples(n)` (tests/fuzz_contract.py): n times SSL_BF_FUZZ_SCALE (default 1).
"""
import pytest
import torch
from fuzz_contract import FUZZ_SCALE, fuzz_examples  # noqa: F401  (kept importable from here; see fuzz_contract)
from hypothesis import HealthCheck, settings

# defined in fuzz_contract.py: `from conftest import ...` finds tests/cluster/conftest.py instead
# when the whole tree is collected; importing it from fuzz_contract always works
from fuzz_contract import FUZZ_SCALE, fuzz_examples  # noqa: F401

settings.register_profile(
    "ssl-bf", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large])
settings.load_profile("ssl-bf")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_terminal_summary(terminalreporter):
    """After a run that included fuzz suites: how many generated inputs they tried."""
    import sys

    contract = sys.modules.get("fuzz_contract")
    if contract is not None and contract.TRIED:
        terminalreporter.write_line(contract.tried_report())
