"""The station against its plain model (#30) on PostgreSQL: the machine of tests/integration/test_station_model.py
(detects, verdicts, calibrate, profiles, claims, a second instance, restarts, retention, and its invariants), each
example on a fresh database of one throwaway cluster, started once for the module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis.stateful import run_state_machine_as_test

from tests.integration.test_station_model import StationModel, model_settings
from tests.support.postgres import Cluster, throwaway_cluster

pytestmark = pytest.mark.slow  # a PostgreSQL cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with throwaway_cluster() as c:
        yield c


@pytest.mark.timeout(300)
def test_the_station_keeps_its_promises_against_a_plain_model_on_postgresql(cluster: Cluster) -> None:
    """About 40 s on 2 cores: 10 examples of up to 25 steps, each on its own database."""

    class OnPostgres(StationModel):
        def new_database(self) -> str | None:
            return cluster.new_database()

    run_state_machine_as_test(OnPostgres, settings=model_settings(examples=10, steps=25))
