"""Fixtures for integration tests against real servers started by the test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.nats import NatsServer, running_nats


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One real ``nats-server -js`` for the session; tests isolate themselves by stream."""
    with running_nats() as server:
        yield server
