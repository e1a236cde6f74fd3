"""Finding roomd nodes on the local network with mDNS / DNS-SD (``_roomd._tcp.local.``).

zeroconf's browser runs in its own thread; its callbacks hand the names found to Trio with
``trio.from_thread``. zeroconf is imported when :func:`discover` runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from ..io import SERVICE_TYPE, open_zeroconf

if TYPE_CHECKING:
    from zeroconf import ServiceInfo, ServiceStateChange, Zeroconf

DEFAULT_DISCOVER_TIMEOUT: Final = 3.0  # the browser re-asks after 1 s, then 2 s ...
INFO_TIMEOUT_MS: Final = 1000
FOUND_QUEUE: Final = 64


@attrs.frozen(order=True)
class DiscoveredNode:
    """A node that answered on the local network."""

    name: str
    url: str  # ws://address:port
    version: str
    protocol: int | None
    addresses: tuple[str, ...] = attrs.field(order=False)
    port: int = attrs.field(order=False)


def _node_of(info: ServiceInfo) -> DiscoveredNode:
    props = {
        (k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if v else "")
        for k, v in info.properties.items()
    }
    addresses = tuple(info.parsed_addresses())
    address = addresses[0] if addresses else (info.server or "").rstrip(".")
    protocol = props.get("protocol", "")
    return DiscoveredNode(
        name=props.get("name") or info.name.removesuffix("." + SERVICE_TYPE),
        url=f"ws://{address}:{info.port}",
        version=props.get("version", ""),
        protocol=int(protocol) if protocol.isdigit() else None,
        addresses=addresses,
        port=info.port or 0,
    )


async def discover(
    timeout: float = DEFAULT_DISCOVER_TIMEOUT, *, interfaces: Sequence[str] | None = None
) -> list[DiscoveredNode]:
    """The roomd nodes that answer on the local network within ``timeout`` seconds.

    Resource handling: owns a Zeroconf instance and its browser for the duration of the call.
    Error handling: ``OSError`` if no multicast socket can be opened.
    """
    from zeroconf import ServiceBrowser, ServiceStateChange

    send, receive = trio.open_memory_channel[str](FOUND_QUEUE)
    token = trio.lowlevel.current_trio_token()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:  # runs in zeroconf's thread
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            # A full queue drops a name: the browser reports it again with its next answer.
            with contextlib.suppress(
                trio.WouldBlock, trio.ClosedResourceError, trio.RunFinishedError
            ):
                trio.from_thread.run_sync(send.send_nowait, name, trio_token=token)

    zc = await trio.to_thread.run_sync(open_zeroconf, interfaces)
    found: dict[str, DiscoveredNode] = {}
    browser: Any = None
    try:
        browser = await trio.to_thread.run_sync(
            lambda: ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change])
        )
        with trio.move_on_after(timeout):
            async for name in receive:
                info = await trio.to_thread.run_sync(
                    zc.get_service_info, SERVICE_TYPE, name, INFO_TIMEOUT_MS
                )
                if info is not None and info.port:
                    found[name] = _node_of(info)
    finally:
        send.close()
        with trio.CancelScope(shield=True):
            if browser is not None:
                await trio.to_thread.run_sync(browser.cancel)
            await trio.to_thread.run_sync(zc.close)
    return sorted(found.values())
