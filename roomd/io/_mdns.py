"""mDNS / DNS-SD under Trio: advertising a node as ``NAME._roomd._tcp.local.``.

zeroconf is threaded: it is created, registered and browsed through ``trio.to_thread.run_sync``
(and a browser's callbacks, in its own thread, hand names to Trio with ``trio.from_thread``:
see :func:`roomd.client.discover`). It is imported when these functions run.

A node listening on a loopback address (``127.0.0.1``, the default) can only be advertised at
that address, which no other machine can reach: :func:`advertise` logs a warning then.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import trio

from ..protocol import PROTOCOL_VERSION

if TYPE_CHECKING:
    from zeroconf import ServiceInfo, Zeroconf

log = logging.getLogger("roomd.mdns")

SERVICE_TYPE: Final = "_roomd._tcp.local."


def open_zeroconf(interfaces: Sequence[str] | None) -> Zeroconf:
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
    version: str,
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
    zc = await trio.to_thread.run_sync(open_zeroconf, interfaces)
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
