"""The engine: pooled connections the server closed are replaced before use."""

from __future__ import annotations

from sqlalchemy import Engine, text

from relightq.db import make_engine


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(text("SELECT pg_backend_pid()")))


def test_a_pooled_connection_the_server_terminated_is_replaced_without_an_error(
    database: str,
) -> None:
    engine = make_engine(database)
    admin = make_engine(database)
    try:
        pooled = _backend_pid(engine)  # back in the pool, idle
        with admin.connect() as connection:
            # What a PostgreSQL restart does to every session: terminate it.
            # (with a timeout, it returns once the session has ended)
            connection.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pooled})
            connection.commit()
        # The next checkout finds the socket hung up and opens a new connection, where
        # without a check the statement itself would fail on the dead one.
        assert _backend_pid(engine) != pooled
    finally:
        engine.dispose()
        admin.dispose()


def test_a_healthy_pooled_connection_is_reused(database: str) -> None:
    engine = make_engine(database)
    try:
        assert _backend_pid(engine) == _backend_pid(engine)
    finally:
        engine.dispose()
