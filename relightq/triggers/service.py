"""Creating triggers, and receiving their events: verify, deduplicate, map, make jobs.

An event is turned into jobs in one transaction with its (trigger, event id) row, whose
unique index makes a repeat - sequential or concurrent - a no-op that returns the jobs
the first delivery made.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook

from relightq.db import utcnow
from relightq.errors import FieldProblem, InvalidInput, NotFound, RelightqError, field_problems
from relightq.jobs.schemas import ALLOWED as JOB_ALLOWED
from relightq.jobs.schemas import JobCreate
from relightq.jobs.service import create_job
from relightq.triggers.models import Trigger, TriggerEvent
from relightq.triggers.schemas import (
    MAX_IMAGES_PER_EVENT,
    SignatureScheme,
    TriggerAccepted,
    TriggerCreate,
    TriggerOut,
)
from relightq.webhooks.secrets import new_secret


class BadSignature(RelightqError):
    """401: the event is not from whom the trigger trusts, or too old; nothing is stored."""

    def __init__(self, why: str) -> None:
        super().__init__(f"signature check failed: {why}", 401, "bad_signature")


def trigger_view(trigger: Trigger, with_secret: bool = False) -> TriggerOut:
    """A trigger as the API shows it."""
    hmac_scheme = trigger.scheme == SignatureScheme.HMAC_SHA256
    return TriggerOut(
        id=trigger.id,
        name=trigger.name,
        url=f"/v1/triggers/{trigger.name}",
        scheme=SignatureScheme(trigger.scheme),
        signature_header=trigger.signature_header if hmac_scheme else None,
        event_id_header=trigger.event_id_header if hmac_scheme else None,
        timestamp_header=trigger.timestamp_header if hmac_scheme else None,
        tolerance_seconds=trigger.tolerance_seconds,
        mapping=trigger.mapping,
        job=trigger.job_template,
        created_at=trigger.created_at,
        secret=trigger.secret if with_secret else None,
    )


def create_trigger(session: Session, tenant_id: uuid.UUID, spec: TriggerCreate) -> Trigger:
    """Store a trigger; its name must be free across every tenant (it is the URL)."""
    if spec.scheme == SignatureScheme.HMAC_SHA256 and not spec.secret:
        raise InvalidInput(
            [FieldProblem("secret", "is required for hmac-sha256 (the sender's secret)")]
        )
    if session.scalar(select(Trigger.id).where(Trigger.name == spec.name)) is not None:
        raise RelightqError(
            f"a trigger named {spec.name} exists; pick another name",
            409,
            "name_taken",
            [FieldProblem("name", "is taken")],
        )
    trigger = Trigger(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        name=spec.name,
        scheme=spec.scheme.value,
        secret=spec.secret or new_secret(),
        signature_header=spec.signature_header,
        event_id_header=spec.event_id_header,
        timestamp_header=spec.timestamp_header,
        tolerance_seconds=spec.tolerance_seconds,
        mapping=spec.mapping.model_dump(),
        job_template=spec.job,
    )
    session.add(trigger)
    session.flush()
    return trigger


def get_trigger(session: Session, tenant_id: uuid.UUID, name: str) -> Trigger:
    """A tenant's trigger by name; anyone else's is a 404."""
    trigger = session.scalar(
        select(Trigger).where(Trigger.name == name, Trigger.tenant_id == tenant_id)
    )
    if trigger is None:
        raise NotFound("trigger")
    return trigger


def list_triggers(session: Session, tenant_id: uuid.UUID) -> list[Trigger]:
    """The tenant's triggers by name."""
    return list(
        session.scalars(
            select(Trigger).where(Trigger.tenant_id == tenant_id).order_by(Trigger.name)
        )
    )


def _header(headers: Mapping[str, str], name: str | None) -> str | None:
    if not name:
        return None
    return headers.get(name.lower())


def _parse_time(value: str) -> datetime:
    try:
        return datetime.fromtimestamp(float(value), tz=UTC)
    except ValueError:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def verify(trigger: Trigger, headers: Mapping[str, str], body: bytes) -> str:
    """Check the signature and timestamp; return the event id. Raises BadSignature."""
    if trigger.scheme == SignatureScheme.STANDARD_WEBHOOKS:
        try:
            # The reference verifier: signature over id.timestamp.body, 5-minute tolerance.
            Webhook(trigger.secret).verify(body, dict(headers), json_parse=False)
        except Exception as exc:  # the library raises several kinds for malformed headers
            raise BadSignature(str(exc) or type(exc).__name__) from exc
        return headers["webhook-id"]
    given = _header(headers, trigger.signature_header)
    if not given:
        raise BadSignature(f"no {trigger.signature_header} header")
    expected = hmac.new(trigger.secret.encode(), body, hashlib.sha256).digest()
    try:
        signature = base64.b64decode(given, validate=True)
    except ValueError as exc:
        raise BadSignature("the signature is not base64") from exc
    if not hmac.compare_digest(expected, signature):
        raise BadSignature("the signature does not match the body")
    if trigger.timestamp_header:
        sent = _header(headers, trigger.timestamp_header)
        if not sent:
            raise BadSignature(f"no {trigger.timestamp_header} header")
        try:
            age = abs((utcnow() - _parse_time(sent)).total_seconds())
        except ValueError as exc:
            raise BadSignature(f"{trigger.timestamp_header} is not a time") from exc
        if age > trigger.tolerance_seconds:
            raise BadSignature(f"the event is {age:.0f} s away from now")
    # Without an event id header, the body itself identifies the event.
    return _header(headers, trigger.event_id_header) or hashlib.sha256(body).hexdigest()


def _search(expression: str, payload: Any) -> Any:
    try:
        return jmespath.search(expression, payload)
    except JMESPathError:
        return None


def map_event(trigger: Trigger, payload: Any, event_id: str) -> list[JobCreate]:
    """The jobs an event asks for, validated; InvalidInput names every bad image's field."""
    mapping = trigger.mapping
    found = _search(mapping["images"], payload)
    images = [found] if isinstance(found, str) else found if isinstance(found, list) else []
    not_urls = [i for i, image in enumerate(images) if not isinstance(image, str)]
    if not_urls:
        raise InvalidInput(
            [FieldProblem(f"images[{i}]", "the mapping found no image URL here") for i in not_urls]
        )
    images = [image for image in images if image]
    if len(images) > MAX_IMAGES_PER_EVENT:
        raise InvalidInput(
            [FieldProblem("images", f"the event names more than {MAX_IMAGES_PER_EVENT} images")]
        )
    external_id = _search(mapping["external_id"], payload) if mapping.get("external_id") else None
    fields = {name: _search(expr, payload) for name, expr in mapping.get("fields", {}).items()}
    fields = {name: value for name, value in fields.items() if value is not None}
    requests: list[JobCreate] = []
    problems: list[FieldProblem] = []
    mapped_metadata = fields.get("metadata")
    for index, image in enumerate(images):
        metadata = {
            **trigger.job_template.get("metadata", {}),
            **(mapped_metadata if isinstance(mapped_metadata, dict) else {}),
            "trigger": {"name": trigger.name, "event_id": event_id, "image_index": index},
        }
        body = {
            **trigger.job_template,
            **fields,
            "subject_image": image,
            "external_id": None if external_id is None else str(external_id),
            "metadata": metadata,
        }
        try:
            requests.append(JobCreate.model_validate(body))
        except ValidationError as exc:
            problems += [
                FieldProblem(f"images[{index}].{p.field}", p.message, p.allowed)
                for p in field_problems(exc.errors(), JOB_ALLOWED)
            ]
    if problems:
        raise InvalidInput(problems)
    return requests


def _stored_event_id(event_id: str) -> str:
    """The id as stored (255 characters at most): longer ids by their digest, so two ids
    that share a long beginning stay two events."""
    if len(event_id) <= 255:
        return event_id
    return "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


def receive(
    session: Session, name: str, headers: Mapping[str, str], body: bytes, bucket: str
) -> TriggerAccepted:
    """Verify an event, and make its jobs once; a repeat returns the first jobs."""
    trigger = session.scalar(select(Trigger).where(Trigger.name == name))
    if trigger is None:
        raise NotFound("trigger")
    event_id = _stored_event_id(verify(trigger, headers, body))
    try:
        # Another system's text may hold NUL characters, which PostgreSQL cannot store and
        # the tenant cannot fix: they are dropped rather than the event refused.
        payload = _without_nul(json.loads(body))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput([FieldProblem("body", "is not valid JSON", "a JSON event")]) from exc
    row_id = session.scalar(
        insert(TriggerEvent)
        .values(id=uuid.uuid4(), trigger_id=trigger.id, event_id=event_id, job_ids=[])
        .on_conflict_do_nothing(index_elements=["trigger_id", "event_id"])
        .returning(TriggerEvent.id)
    )
    if row_id is None:
        first = session.scalars(
            select(TriggerEvent).where(
                TriggerEvent.trigger_id == trigger.id, TriggerEvent.event_id == event_id
            )
        ).one()
        return TriggerAccepted(
            event_id=event_id, duplicate=True, jobs=[uuid.UUID(j) for j in first.job_ids]
        )
    jobs = [
        create_job(session, trigger.tenant_id, request, bucket)
        for request in map_event(trigger, payload, event_id)
    ]
    event = session.get(TriggerEvent, row_id)
    assert event is not None
    event.job_ids = [str(job.id) for job in jobs]
    session.flush()
    return TriggerAccepted(event_id=event_id, duplicate=False, jobs=[job.id for job in jobs])
