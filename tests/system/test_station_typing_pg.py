"""#34's migration on PostgreSQL: a state at revision 0008 with rows, upgraded by `kanoclip serve`'s connect, keeps
every row and gains the defect-type columns and the examples table."""

from __future__ import annotations

import pytest

from kanoclip.station import db
from tests.support.migration import check_upgraded, fill_at_0008
from tests.support.postgres import throwaway_cluster

pytestmark = pytest.mark.slow  # a PostgreSQL cluster


def test_the_migration_adds_the_columns_without_losing_rows_on_postgresql() -> None:
    with throwaway_cluster() as cluster:
        url = cluster.new_database()
        engine = db.create(url)
        fill_at_0008(engine)
        engine.dispose()
        upgraded = db.connect(url)
        try:
            check_upgraded(upgraded)
        finally:
            upgraded.dispose()
