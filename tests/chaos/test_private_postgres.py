"""The private PostgreSQL of chaos tests: stopped and started at will, data kept, and the
machine's shared server never touched."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text

from tests.support.private_postgres import PrivatePostgres, require_private_postgres

SHARED = "postgresql://postgres@127.0.0.1:5432/postgres"


def shared_server_started_at() -> datetime.datetime | None:
    """When the shared server's postmaster started; None if it is not running here."""
    try:
        with psycopg.connect(SHARED, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    except psycopg.OperationalError:
        return None
    assert row is not None
    started: datetime.datetime = row[0]
    return started


@pytest.fixture(autouse=True)
def shared_server_untouched() -> Iterator[None]:
    require_private_postgres()
    before = shared_server_started_at()
    yield
    assert shared_server_started_at() == before, "the shared PostgreSQL was restarted"


def test_a_private_cluster_stops_and_starts_again_with_its_data() -> None:
    with PrivatePostgres() as pg:
        assert pg.port != 5432
        url = pg.create_database("chaos_probe")
        assert url == f"postgresql+psycopg://postgres@127.0.0.1:{pg.port}/chaos_probe"
        # The URL is the one the app takes as RELIGHTQ_DATABASE_URL.
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE probe (v text)"))
            conn.execute(text("INSERT INTO probe VALUES ('kept')"))
        engine.dispose()
        # Its sockets are in its own folder, none beside the shared server's.
        assert (pg.socket_dir / f".s.PGSQL.{pg.port}").exists()
        assert not Path(f"/var/run/postgresql/.s.PGSQL.{pg.port}").exists()

        held = pg.connect("chaos_probe", autocommit=True)
        pg.stop()
        assert not pg.is_running()
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")  # a fast shutdown ends open sessions
        held.close()
        with pytest.raises(psycopg.OperationalError):
            pg.connect("chaos_probe")

        pg.start()
        with pg.connect("chaos_probe") as conn:
            assert conn.execute("SELECT v FROM probe").fetchall() == [("kept",)]

        pg.restart()
        with pg.connect("chaos_probe") as conn:
            assert conn.execute("SELECT v FROM probe").fetchall() == [("kept",)]
        root = pg.root
    assert root is not None and not root.exists()


def test_leaving_by_an_exception_still_stops_the_server_and_removes_its_folder() -> None:
    with pytest.raises(RuntimeError, match="the body failed"), PrivatePostgres() as pg:
        root, port = pg.root, pg.port
        raise RuntimeError("the body failed")
    assert root is not None and not root.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=2)
