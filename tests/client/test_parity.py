"""The sync and async clients offer the same calls, with the same parameters."""

from __future__ import annotations

import inspect

from relightq.client import AsyncRelightqClient, RelightqClient

LIFECYCLE = {"close", "with_retry"}


def public(cls: type) -> dict[str, object]:
    return {n: f for n, f in vars(cls).items() if not n.startswith("_") and callable(f)}


def test_every_call_has_the_same_signature_in_both_clients() -> None:
    sync, aio = public(RelightqClient), public(AsyncRelightqClient)

    assert sync.keys() == aio.keys()
    assert len(sync) > 50  # every route: jobs, batches, webhooks, triggers, ...
    for name, method in sync.items():
        ours = inspect.signature(method)  # type: ignore[arg-type]
        theirs = inspect.signature(aio[name])  # type: ignore[arg-type]
        assert list(ours.parameters.values()) == list(theirs.parameters.values()), name
        if name.startswith("iter_"):
            assert "AsyncIterator" in str(theirs.return_annotation), name
        elif name != "with_retry":
            assert inspect.iscoroutinefunction(aio[name]), name
        assert (method.__doc__ or "").strip(), f"{name} has no docstring"  # type: ignore[attr-defined]
