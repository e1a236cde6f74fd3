"""Finding roomd nodes on the local network with mDNS / DNS-SD (``_roomd._tcp.local.``).

zeroconf is threaded: it is created, registered and browsed through ``trio.to_thread.run_sync``,
and its browser's callbacks (in its own thread) hand names to Trio with ``trio.from_thread``.
It is imported when these functions run, not when the client is imported.

A node listening on a loopback address (``127.0.0.1``, the default) can only be advertised at
that address, which no other machine can reach: :func:`advertise` logs a warning then.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from .. import __version__
from ..protocol import PROTOCOL_VERSION

if TYPE_CHECKING:
    from zeroconf import ServiceInfo, ServiceStateChange, Zeroconf

log = logging.getLogger("roomd.client.discovery")

SERVICE_TYPE: Final = "_roomd._tcp.local."
DEFAULT_DISCOVER_TIMEOUT: Final = 3.0  # the browser re-asks after 1 s, then 2 s ...
INFO_TIMEOUT_MS: Final = 1000
FOUND_QUEUE: Final = 64
_HANDOFF_ERRORS: Final = (trio.WouldBlock, trio.ClosedResourceError, trio.RunFinishedError)


@attrs.frozen(order=True)
class DiscoveredNode:
    """A node that answered on the local network."""

    name: str
    url: str  # ws://address:port
    version: str
    protocol: int | None
    addresses: tuple[str, ...] = attrs.field(order=False)
    port: int = attrs.field(order=False)


def _zeroconf(interfaces: Sequence[str] | None) -> Zeroconf:
    from zeroconf import InterfaceChoice, IPVersion, Zeroconf

    if interfaces is None:
        return Zeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)
    return Zeroconf(interfaces=list(interfaces), ip_version=IPVersion.V4Only)


def _addresses(host: str) -> list[str]:
    """The IPv4 addresses to advertise for a node listening on ``host``."""
    import ifaddr  # a dependency of zeroconf

    if host in ("", "0.0.0.0", "::"):
        found = {
            ip.ip
            for adapter in ifaddr.get_adapters()
            for ip in adapter.ips
            if isinstance(ip.ip, str) and not ip.ip.startswith("127.")
        }
        return sorted(found) or ["127.0.0.1"]
    try:
        return [str(ipaddress.IPv4Address(host))]
    except ValueError:
        return sorted({str(i[4][0]) for i in socket.getaddrinfo(host, None, socket.AF_INET)})


def loopback_only(addresses: Sequence[str]) -> bool:
    """Whether every advertised address is a loopback one (reachable from this machine only)."""
    return all(ipaddress.ip_address(a).is_loopback for a in addresses)


def service_info(name: str, host: str, port: int, version: str) -> ServiceInfo:
    """The DNS-SD record of a node: ``NAME._roomd._tcp.local.`` with name/version/protocol."""
    from zeroconf import ServiceInfo

    label = name.replace(".", "-")
    return ServiceInfo(
        SERVICE_TYPE,
        f"{label}.{SERVICE_TYPE}",
        addresses=[socket.inet_aton(a) for a in _addresses(host)],
        port=port,
        properties={"name": name, "version": version, "protocol": str(PROTOCOL_VERSION)},
        server=f"{label}.local.",
    )


async def advertise(
    name: str,
    host: str,
    port: int,
    version: str = __version__,
    *,
    interfaces: Sequence[str] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Advertise a node until cancelled; ``task_status.started`` gets the registered name.

    Run it next to the node: ``await nursery.start(advertise, node.name, host, port)``.

    Resource handling: owns a Zeroconf instance; on cancellation the service is unregistered
    (a goodbye packet) and the instance closed, shielded from the cancellation.
    Error handling: ``OSError`` if no multicast socket can be opened; a name already taken on
    the network is changed (``name (2)``) rather than refused; a warning is logged when the only
    address to advertise is a loopback one.
    """
    info = service_info(name, host, port, version)
    addresses = info.parsed_addresses()
    if loopback_only(addresses):
        log.warning(
            "advertising %s at %s, a loopback address: only this machine can reach it; to be "
            "found from other machines, listen on 0.0.0.0 or a LAN address (roomd --host)",
            name,
            ", ".join(addresses),
        )
    zc = await trio.to_thread.run_sync(_zeroconf, interfaces)
    registered = False
    try:
        await trio.to_thread.run_sync(lambda: zc.register_service(info, allow_name_change=True))
        registered = True
        task_status.started(info.name)
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            if registered:
                await trio.to_thread.run_sync(zc.unregister_service, info)
            await trio.to_thread.run_sync(zc.close)


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

    zc = await trio.to_thread.run_sync(_zeroconf, interfaces)
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomd discover", description="List the roomd nodes advertised on the local network."
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_DISCOVER_TIMEOUT)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    return parser


def discover_main(argv: Sequence[str]) -> int:
    """``roomd discover [--timeout S] [--json]``; exit status 1 when nothing was found."""
    args = _parser().parse_args(argv)
    try:
        nodes = trio.run(discover, args.timeout)
    except OSError as exc:
        raise SystemExit(f"roomd discover: {exc}") from None
    for node in nodes:
        if args.json:
            print(json.dumps(attrs.asdict(node)))
        else:
            print(f"{node.name}\t{node.url}\tversion {node.version}\tprotocol {node.protocol}")
    if not nodes and not args.json:
        print(f"no roomd node answered within {args.timeout:g} s")
    return 0 if nodes else 1
