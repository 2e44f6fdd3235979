"""The throwaway PostgreSQL cluster."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.support.postgres import PostgresCluster

pytestmark = pytest.mark.e2e


def test_create_use_drop(postgres_cluster: PostgresCluster) -> None:
    name = postgres_cluster.create_database("smoke")
    engine = sa.create_engine(postgres_cluster.url(name))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x int)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1)"))
            assert conn.execute(sa.text("SELECT count(*) FROM t")).scalar() == 1
            assert conn.execute(sa.text("SHOW listen_addresses")).scalar() == "127.0.0.1"
    finally:
        engine.dispose()
    postgres_cluster.drop_database(name)
    engine = sa.create_engine(postgres_cluster.url("postgres"))
    try:
        with engine.connect() as conn:
            names = conn.execute(sa.text("SELECT datname FROM pg_database")).scalars().all()
    finally:
        engine.dispose()
    assert name not in names
