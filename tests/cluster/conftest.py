"""Fixtures for tests against the real SLURM test cluster (tests/cluster/slurm-up.sh).

Without a running cluster the tests skip with a reason that starts with SKIP_PREFIX
("SLURM test cluster not running"); set SSL_BF_REQUIRE_SLURM=1 (CI does) to fail instead.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from slurm_helpers import SKIP_PREFIX, STATE, cluster_problem


@pytest.fixture(scope="session")
def slurm():
    problem = cluster_problem()
    if problem:
        msg = f"{SKIP_PREFIX}: {problem} (start it with tests/cluster/slurm-up.sh)"
        if os.environ.get("SSL_BF_REQUIRE_SLURM") == "1":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return STATE


@pytest.fixture
def cancel_on_exit():
    """Collects submitit jobs; any still queued or running when the test ends is cancelled."""
    jobs: list = []
    yield jobs
    ids = []
    for job in jobs:
        try:
            if not job.done(force_check=True):
                ids.append(job.job_id)
        except Exception:  # noqa: BLE001 - cleanup must not mask the test's own failure
            ids.append(job.job_id)
    if ids:
        subprocess.run(["scancel", *ids], timeout=20, check=False)
