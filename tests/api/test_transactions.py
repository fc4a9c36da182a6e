"""The request's session owns the transaction: it commits once, after the route has
answered and before the answer is sent; a commit that fails is an error answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import DbSession
from api.errors import install_error_handlers
from relightq.errors import NotFound

FAIL_COMMIT = "test_fail_commit"
# Marks the sessions of this file's routes: other sessions of the suite (its worker
# threads, schedules) may commit meanwhile and are not what these tests look at.
ROUTE_SESSION = "test_route_session"


class _Timeline:
    """ASGI wrapper noting when the answer starts going out, beside the commits."""

    def __init__(self, app: ASGIApp, events: list[str]) -> None:
        self.app = app
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def noting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.events.append(f"response {message['status']}")
            await send(message)

        await self.app(scope, receive, noting_send)


@pytest.fixture
def events(database: str) -> Iterator[list[str]]:
    seen: list[str] = []

    def before_commit(session: Session) -> None:
        failure = session.info.get(FAIL_COMMIT)
        if failure is not None:
            raise failure

    def after_commit(session: Session) -> None:
        if session.info.get(ROUTE_SESSION):
            seen.append("commit")

    def after_rollback(session: Session) -> None:
        if session.info.get(ROUTE_SESSION):
            seen.append("rollback")

    event.listen(Session, "before_commit", before_commit)
    event.listen(Session, "after_commit", after_commit)
    event.listen(Session, "after_rollback", after_rollback)
    yield seen
    event.remove(Session, "before_commit", before_commit)
    event.remove(Session, "after_commit", after_commit)
    event.remove(Session, "after_rollback", after_rollback)


def client(events: list[str]) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/write")
    def write(db: DbSession, fail: str = "") -> dict[str, Any]:
        db.info[ROUTE_SESSION] = True
        db.execute(text("SELECT 1"))
        if fail == "down":
            db.info[FAIL_COMMIT] = OperationalError("COMMIT", {}, Exception("server closed"))
        elif fail == "conflict":
            db.info[FAIL_COMMIT] = IntegrityError("COMMIT", {}, Exception("duplicate key"))
        return {"ok": True}

    @app.post("/refuse")
    def refuse(db: DbSession) -> dict[str, Any]:
        db.info[ROUTE_SESSION] = True
        db.execute(text("SELECT 1"))
        raise NotFound("thing")

    return TestClient(_Timeline(app, events), raise_server_exceptions=False)


def test_the_session_commits_before_the_answer_is_sent(events: list[str]) -> None:
    response = client(events).post("/write")

    assert response.status_code == 200
    assert events == ["commit", "response 200"]


def test_an_error_answer_rolls_back_and_commits_nothing(events: list[str]) -> None:
    response = client(events).post("/refuse")

    assert response.status_code == 404
    assert "commit" not in events
    assert events[-1] == "response 404"


def test_a_commit_lost_to_a_database_outage_answers_503_not_2xx(events: list[str]) -> None:
    response = client(events).post("/write", params={"fail": "down"})

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    assert "commit" not in events


def test_any_other_failed_commit_answers_500_not_2xx(events: list[str]) -> None:
    response = client(events).post("/write", params={"fail": "conflict"})

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "commit" not in events
