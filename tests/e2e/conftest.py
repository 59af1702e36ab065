"""The stack fixture: one ``Stack`` per test module (it takes a few seconds to start, the backends keep
state across tests), and a check after every test that no component died."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tools.stack import Stack, StackError


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The whole pipeline on loopback; a missing binary or a component that does not start fails the
    tests that use it (never a skip), naming the component with the end of its log."""
    running = Stack()
    try:
        running.start()
    except StackError as exc:
        pytest.fail(f"the end-to-end stack did not start: {exc}", pytrace=False)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(autouse=True)
def _components_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the stack: every component still runs (or the test fails naming it)."""
    yield
    if "stack" in request.fixturenames:
        running: Stack = request.getfixturevalue("stack")
        try:
            running.check_running()
        except StackError as exc:
            pytest.fail(str(exc), pytrace=False)
