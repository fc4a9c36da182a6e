"""Engine, sessions and the declarative base shared by every feature's models."""

from __future__ import annotations

import select
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    MetaData,
    Table,
    bindparam,
    create_engine,
    event,
)
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from relightq.settings import get_settings

# Stable constraint names so Alembic autogenerate and hand-written migrations agree.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on PostgreSQL and on the demo's SQLite alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use relightq.db.utcnow()")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # SQLite drops the zone; we only store UTC
        return value


def table_of(model: type[Base]) -> Table:
    """A model's table, for Core statements on the hot paths (no ORM machinery)."""
    return cast(Table, model.__table__)


def typed_param(name: str, column: ColumnElement[Any]) -> BindParameter[Any]:
    """A named parameter of a statement built once, bound as ``column`` binds its values
    (UTC datetimes, exact amounts, UUIDs)."""
    return bindparam(name, type_=column.type)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def make_engine(url: str) -> Engine:
    """An engine for PostgreSQL (production, tests) or SQLite (demo)."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets the demo's worker thread write while the main thread reads.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # hide_parameters: a failed statement's values (webhook and trigger secrets, say) never
    # reach an exception message or a log line. A pool of 20 kept open: a worker runs
    # ~28 threads, and connections past the kept ones are closed on return, so a smaller
    # pool opened a new PostgreSQL backend (a fork on the server) for every few jobs.
    engine = create_engine(url, pool_size=20, max_overflow=10, hide_parameters=True)
    event.listen(engine, "checkout", _drop_if_hung_up)
    return engine


def _drop_if_hung_up(dbapi_connection: Any, _record: object, _proxy: object) -> None:
    """Pessimistic disconnect handling without a round trip per checkout.

    ``pool_pre_ping`` sends ``SELECT 1`` on every checkout: seven round trips per job.
    A connection resting in the pool has nothing to read unless the server hung up (a
    restart sends "terminating connection" and closes the socket), so a zero-timeout
    poll of its socket tells the same for a system call. Raising DisconnectionError
    makes the pool open a fresh connection instead (SQLAlchemy's documented hook for a
    custom ping); a connection cut without a word is still caught by the first statement,
    whose error the callers' retries wait out.
    """
    if dbapi_connection.closed or _readable(dbapi_connection.fileno()):
        raise DisconnectionError("the server closed the connection while it was pooled")


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


@lru_cache
def get_engine() -> Engine:
    """The process-wide engine for the configured database."""
    return make_engine(get_settings().database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    """Sessions that keep loaded values after commit (we return them after commit)."""
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def one_statement() -> Iterator[Connection]:
    """A connection in autocommit for a unit of work that is one statement (a claim is one
    conditional UPDATE): the statement is atomic on its own, and BEGIN and COMMIT would
    be two more round trips. The pool puts the connection back in its usual mode."""
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        yield connection


@contextmanager
def session_scope() -> Iterator[Session]:
    """A unit of work: commit on success, roll back on error. Services only flush."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
