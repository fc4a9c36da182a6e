"""Creating triggers, and receiving their events: verify, deduplicate, map, make jobs.

An event is turned into jobs in one transaction with its (trigger, key) rows - its event
id, and for hmac-sha256 also its body's digest - whose unique index makes a repeat -
sequential or concurrent - a no-op that returns the jobs the first delivery made.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook

from relightq.db import utcnow
from relightq.errors import (
    BadSignature,
    FieldProblem,
    InvalidInput,
    NameTaken,
    NotFound,
    field_problems,
)
from relightq.jobs.schemas import ALLOWED as JOB_ALLOWED
from relightq.jobs.schemas import JobCreate
from relightq.jobs.service import create_job, foreign_subject_problem
from relightq.json_input import parse_json
from relightq.tenants.ratelimit import check_trigger_rate
from relightq.triggers.models import Trigger, TriggerEvent
from relightq.triggers.schemas import (
    DEFAULT_TOLERANCE_SECONDS,
    MAX_IMAGES_PER_EVENT,
    SignatureScheme,
    TriggerAccepted,
    TriggerCreate,
    TriggerOut,
)
from relightq.webhooks.secrets import new_secret

# trigger_events keys of body digests; event ids that look like one are stored hashed.
BODY_KEY_PREFIX = "body:"


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
    # One statement against the name's unique index: of two creations at once, the second
    # waits for the first to commit and then finds the name taken (a 409, not a 500).
    trigger = session.scalar(
        insert(Trigger)
        .values(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            name=spec.name,
            scheme=spec.scheme.value,
            secret=spec.secret or new_secret(),
            signature_header=spec.signature_header,
            event_id_header=spec.event_id_header,
            timestamp_header=spec.timestamp_header,
            tolerance_seconds=spec.tolerance_seconds or DEFAULT_TOLERANCE_SECONDS[spec.scheme],
            mapping=spec.mapping.model_dump(),
            job_template=spec.job,
        )
        .on_conflict_do_nothing(index_elements=["name"])
        .returning(Trigger)
    )
    if trigger is None:
        raise NameTaken(spec.name)
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
        return _verify_standard_webhooks(trigger, headers, body)
    return _verify_hmac(trigger, headers, body)


def _verify_standard_webhooks(trigger: Trigger, headers: Mapping[str, str], body: bytes) -> str:
    # Not Webhook.verify: it hard-codes a 5-minute tolerance, so the trigger's own
    # tolerance_seconds would be shown but ignored, and it raises ValueError and the like
    # on malformed headers. The timestamp is checked here; the signature is still the
    # reference library's own Webhook.sign, compared in constant time as verify does.
    msg_id = _header(headers, "webhook-id")
    sent = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    if not (msg_id and sent and signatures):
        raise BadSignature("needs webhook-id, webhook-timestamp and webhook-signature headers")
    try:
        seconds = float(sent)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):
        raise BadSignature("webhook-timestamp is not Unix time in seconds")
    _check_age(trigger, time.time() - seconds)
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise BadSignature("the body is not UTF-8") from exc
    try:
        expected = Webhook(trigger.secret).sign(msg_id, datetime.fromtimestamp(seconds, UTC), text)
    except Exception as exc:  # a secret the library cannot read; nothing can match it
        raise BadSignature("the trigger's secret is not a Standard Webhooks secret") from exc
    expected_bytes = base64.b64decode(expected.partition(",")[2])
    # "v1,<base64> v1,<base64> ...": several while the sender rotates its secret.
    for signature in signatures.split():
        version, _, value = signature.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except ValueError:
            continue
        if hmac.compare_digest(expected_bytes, given):
            return msg_id
    raise BadSignature("no v1 signature in webhook-signature matches")


def _check_age(trigger: Trigger, age: float) -> None:
    """Refuse an event stamped further from now than the trigger's tolerance, either way."""
    if abs(age) > trigger.tolerance_seconds:
        when = "old" if age > 0 else "in the future"
        raise BadSignature(
            f"the event is {abs(age):.0f} s {when}; "
            f"the trigger accepts {trigger.tolerance_seconds} s (tolerance_seconds)"
        )


def _verify_hmac(trigger: Trigger, headers: Mapping[str, str], body: bytes) -> str:
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
            age = (utcnow() - _parse_time(sent)).total_seconds()
        except (ValueError, OverflowError, OSError) as exc:
            raise BadSignature(f"{trigger.timestamp_header} is not a time") from exc
        _check_age(trigger, age)
    # Without an event id header, the body itself identifies the event.
    return _header(headers, trigger.event_id_header) or hashlib.sha256(body).hexdigest()


def _search(expression: str, payload: Any) -> Any:
    try:
        return jmespath.search(expression, payload)
    except JMESPathError:
        return None


def map_event(
    session: Session, trigger: Trigger, payload: Any, event_id: str, bucket: str
) -> list[JobCreate]:
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
            request = JobCreate.model_validate(body)
        except ValidationError as exc:
            problems += [
                FieldProblem(f"images[{index}].{p.field}", p.message, p.allowed)
                for p in field_problems(exc.errors(), JOB_ALLOWED)
            ]
            continue
        # Checked here, not by create_job, so the 422 names the image it is about.
        foreign = foreign_subject_problem(session, trigger.tenant_id, request.subject_image, bucket)
        if foreign is not None:
            problems.append(
                FieldProblem(f"images[{index}].{foreign.field}", foreign.message, foreign.allowed)
            )
        requests.append(request)
    if problems:
        raise InvalidInput(problems)
    return requests


def _stored_event_id(event_id: str) -> str:
    """The id as stored (255 characters at most): longer ids by their digest, so two ids
    that share a long beginning stay two events; so are ids that would pass for a body
    digest's key, which the sender's unsigned header must not be able to pre-empt."""
    if len(event_id) <= 255 and not event_id.startswith(BODY_KEY_PREFIX):
        return event_id
    return "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()


def _dedupe_keys(trigger: Trigger, event_id: str, body: bytes) -> list[str]:
    """The trigger_events keys an event is known by; any one seen before makes it a repeat.

    hmac-sha256 signs only the body, so the event id header can be changed or dropped
    at will: the body's digest is a key too, and a signed body is turned into jobs once.
    Sorted, so two requests sharing keys insert them in one order and cannot deadlock.
    """
    keys = {event_id}
    if trigger.scheme == SignatureScheme.HMAC_SHA256:
        keys.add(f"{BODY_KEY_PREFIX}sha256:{hashlib.sha256(body).hexdigest()}")
    return sorted(keys)


def receive(
    session: Session, name: str, headers: Mapping[str, str], body: bytes, bucket: str
) -> TriggerAccepted:
    """Verify an event, and make its jobs once; a repeat returns the first jobs."""
    trigger = session.scalar(select(Trigger).where(Trigger.name == name))
    if trigger is None:
        raise NotFound("trigger")
    # Before the signature: a flood of forged events is limited too. Unknown names are
    # not counted (a 404 stores nothing), as unknown API keys are not.
    check_trigger_rate(trigger.name)
    event_id = _stored_event_id(verify(trigger, headers, body))
    # Another system's text may hold NUL characters, which PostgreSQL cannot store, or
    # lone surrogates, which cannot be encoded at all, and the tenant cannot fix either:
    # NUL is dropped and a surrogate made U+FFFD rather than the event refused. Not JSON,
    # or nested too deep to map safely, is a 422 naming the body.
    payload = parse_json(body, "body", "a JSON event", document=True, clean=True)
    keys = _dedupe_keys(trigger, event_id, body)
    # A concurrent request holding one of the keys makes this INSERT wait for its commit.
    savepoint = session.begin_nested()
    inserted = list(
        session.scalars(
            insert(TriggerEvent)
            .values(
                [
                    {"id": uuid.uuid4(), "trigger_id": trigger.id, "event_id": key, "job_ids": []}
                    for key in keys
                ]
            )
            .on_conflict_do_nothing(index_elements=["trigger_id", "event_id"])
            .returning(TriggerEvent.id)
        )
    )
    if len(inserted) < len(keys):
        # Seen before under one key: keep none of this request's other keys, so a repeat
        # stores nothing and answers the first delivery's jobs.
        savepoint.rollback()
        first = session.scalars(
            select(TriggerEvent)
            .where(TriggerEvent.trigger_id == trigger.id, TriggerEvent.event_id.in_(keys))
            .order_by(TriggerEvent.created_at)
            .limit(1)
        ).one()
        return TriggerAccepted(
            event_id=event_id, duplicate=True, jobs=[uuid.UUID(j) for j in first.job_ids]
        )
    savepoint.commit()
    jobs = [
        create_job(session, trigger.tenant_id, request, bucket)
        for request in map_event(session, trigger, payload, event_id, bucket)
    ]
    job_ids = [str(job.id) for job in jobs]
    session.execute(
        update(TriggerEvent).where(TriggerEvent.id.in_(inserted)).values(job_ids=job_ids)
    )
    return TriggerAccepted(event_id=event_id, duplicate=False, jobs=[job.id for job in jobs])
