"""Fixtures of the cluster tests; the helpers themselves are in slurm_helpers.py.

A module that needs the cluster says `pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("slurm_cluster")]`;
tests that need only docker or an HTTP server do not pay for the probe.
"""

from __future__ import annotations

import uuid

import pytest

from tests.integration.slurm_helpers import cluster_skip_reason, sh


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """Skip the module, with the reason, when the local SLURM cluster cannot take jobs."""
    reason = cluster_skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def job_name():
    """One unique job name for a module's jobs; whatever is left of them is cancelled at the end."""
    name = f"pantheon-it-{uuid.uuid4().hex[:8]}"
    yield name
    sh(["scancel", "--name", name], timeout=10)
