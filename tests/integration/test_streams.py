"""JetStream stream limits on a real NATS: configurable, and an operator's own tuning survives a planner start."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy

from bus.streams import StreamLimits, ensure_streams
from tests.fixtures.services import Hub

pytestmark = [pytest.mark.services, pytest.mark.anyio]


@pytest.fixture
async def bare_js(nats_client: NatsClient, hub: Hub) -> AsyncIterator[JetStreamContext]:
    """JetStream without the streams (the `js` fixture creates them)."""
    js = nats_client.jetstream()
    yield js
    for stream in (hub.subjects.events_stream, hub.subjects.plans_stream, hub.subjects.dead_letters_stream):
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)


async def test_missing_streams_are_created_with_defaults_and_configured_limits(
    bare_js: JetStreamContext, hub: Hub
) -> None:
    js = bare_js
    limits = {"events": StreamLimits(max_bytes=64 * 2**20, max_msgs_per_subject=100_000, discard="new")}
    await ensure_streams(js, hub.subjects, limits=limits)
    events = (await js.stream_info(hub.subjects.events_stream)).config
    assert events.max_bytes == 64 * 2**20
    assert events.max_msgs_per_subject == 100_000
    assert events.discard == DiscardPolicy.NEW
    assert events.max_age == 7 * 86400  # the default, not configured
    assert events.duplicate_window == 120
    plans = (await js.stream_info(hub.subjects.plans_stream)).config
    assert plans.max_age == 7 * 86400 and plans.max_bytes in (None, -1)
    dead = (await js.stream_info(hub.subjects.dead_letters_stream)).config
    assert dead.max_age == 30 * 86400


async def test_an_operators_tuning_is_kept_and_only_configured_limits_are_applied(
    bare_js: JetStreamContext, hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bus.streams")
    js = bare_js
    await ensure_streams(js, hub.subjects)
    name = hub.subjects.events_stream
    tuned = dataclasses.replace(
        (await js.stream_info(name)).config, max_bytes=5 * 2**30, max_age=2 * 86400.0, max_msgs_per_subject=50_000
    )
    await js.update_stream(tuned)  # what `nats stream edit` would do

    # A planner starting with nothing configured changes nothing.
    assert await ensure_streams(js, hub.subjects) == {}
    kept = (await js.stream_info(name)).config
    assert (kept.max_bytes, kept.max_age, kept.max_msgs_per_subject) == (5 * 2**30, 2 * 86400, 50_000)
    assert "keeps limits set outside this configuration" in caplog.text
    assert "max_age: 172800.0 -> 604800.0" in caplog.text

    # One limit configured: that one is applied (and logged), the rest of the tuning stays.
    changes = await ensure_streams(js, hub.subjects, limits={"events": StreamLimits(max_age_seconds=86400.0)})
    assert changes == {name: {"max_age": (2 * 86400.0, 86400.0)}}
    after = (await js.stream_info(name)).config
    assert (after.max_bytes, after.max_age, after.max_msgs_per_subject) == (5 * 2**30, 86400, 50_000)
    assert "configured limits applied: max_age: 172800.0 -> 86400.0" in caplog.text

    # Configured again, identically: nothing to do.
    assert await ensure_streams(js, hub.subjects, limits={"events": StreamLimits(max_age_seconds=86400.0)}) == {}
