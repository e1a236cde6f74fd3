"""Fixtures: nodes running in the test's nursery on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from roomd import Node
from tests.support import make_config


@pytest.fixture
async def start_node(nursery: trio.Nursery) -> Callable[..., Any]:
    """``node = await start_node(limits={...})``: a node running until the test ends."""

    async def start(**sections: dict[str, Any]) -> Node:
        node = Node(make_config(**sections))
        await nursery.start(node.run)
        return node

    return start


@pytest.fixture
async def node(start_node: Callable[..., Any]) -> Node:
    n: Node = await start_node()
    return n


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Mark a test whose call failed (``item.failed_call``), for fixtures that keep evidence."""
    report = yield
    if report.when == "call" and report.failed:
        item.failed_call = True  # type: ignore[attr-defined]
    return report
