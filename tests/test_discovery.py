"""mDNS discovery: the record a node advertises, and advertise/discover in a private network
namespace (``unshare -n``), where multicast on loopback reaches no other machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from roomd.client._discovery import _node_of
from roomd.io import SERVICE_TYPE, loopback_only, service_info

ROOT = Path(__file__).resolve().parent.parent


def _can_unshare() -> str | None:
    """Why a private network namespace cannot be used here, or ``None`` if it can."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs the unshare and ip commands"
    try:
        probe = subprocess.run(
            ["unshare", "-n", "ip", "link", "set", "lo", "up"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -n failed: {exc}"
    if probe.returncode != 0:
        return f"unshare -n is not allowed here: {probe.stderr.decode().strip()}"
    return None


NO_NAMESPACE = _can_unshare()

# Runs inside `unshare -n`: a node advertised on loopback, found by the API and by the command;
# then `roomd --mdns` with its default host, which warns that it advertises a loopback address.
SCRIPT = """
import json, logging, signal, subprocess, sys
import trio
from roomd import Node
from roomd.client import fetch_health
from roomd.client import discover
from roomd.io import advertise
from tests.support import make_config

for cmd in ("link set lo up", "link set lo multicast on", "route add 224.0.0.0/4 dev lo"):
    subprocess.run(["ip", *cmd.split()], check=True)

class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []
    def emit(self, record):
        self.messages.append(record.getMessage())

warnings = Warnings()
logging.getLogger("roomd.mdns").addHandler(warnings)

async def node_stderr_until(text):
    command = [sys.executable, "-m", "roomd.cli", "--dev", "--port", "0", "--mdns"]
    proc = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE)
    seen = b""
    try:
        with trio.move_on_after(15):
            for _ in range(1000):
                chunk = await proc.stderr.receive_some(4096)
                seen += chunk
                if not chunk or text.encode() in seen:
                    break
    finally:
        proc.send_signal(signal.SIGINT)
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return seen.decode()

async def main():
    async with trio.open_nursery() as nursery:
        node = Node(make_config(node={"name": "alpha"}))
        port = await nursery.start(node.run)
        scope = trio.CancelScope()
        async def advertised(task_status):
            with scope:
                await advertise("alpha", "127.0.0.1", port, "9.9.9", task_status=task_status)
        name = await nursery.start(advertised)
        found = await discover(2.5)
        health = await fetch_health(found[0].url) if found else None
        cli = await trio.run_process(
            [sys.executable, "-m", "roomd.cli", "discover", "--json", "--timeout", "2.5"],
            capture_stdout=True, check=False)
        scope.cancel()  # unregisters (goodbye packets) and closes the advertiser's zeroconf
        after = await discover(1.0)
        stderr = await node_stderr_until("loopback address")
        print(json.dumps({
            "port": port, "name": name, "found": [vars_(n) for n in found],
            "health": health.name if health else None,
            "cli": cli.stdout.decode().splitlines(), "cli_status": cli.returncode,
            "after": [n.name for n in after],
            "warnings": warnings.messages, "cli_stderr": stderr,
        }))
        node.shutdown()

def vars_(n):
    return {"name": n.name, "url": n.url, "version": n.version, "protocol": n.protocol}

trio.run(main)
"""


def test_loopback_only_addresses_are_recognised() -> None:
    assert loopback_only(["127.0.0.1"]) and loopback_only(["127.0.1.1", "::1"])
    assert not loopback_only(["127.0.0.1", "192.168.1.20"]) and not loopback_only(["10.0.0.7"])


def test_service_record_round_trip() -> None:
    info = service_info("node.one", "127.0.0.1", 9000, "1.2.3")
    assert info.type == SERVICE_TYPE and info.name == f"node-one.{SERVICE_TYPE}"
    node = _node_of(info)
    assert (node.name, node.url, node.version, node.protocol) == (
        "node.one",
        "ws://127.0.0.1:9000",
        "1.2.3",
        1,
    )


@pytest.mark.skipif(NO_NAMESPACE is not None, reason=str(NO_NAMESPACE))
async def test_advertise_and_discover_in_a_private_network_namespace() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with trio.fail_after(60):
        result = await trio.run_process(
            ["unshare", "-n", sys.executable, "-c", SCRIPT],
            capture_stdout=True,
            capture_stderr=True,
            env=env,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    report = json.loads(result.stdout.decode().splitlines()[-1])
    url = f"ws://127.0.0.1:{report['port']}"
    assert report["name"] == f"alpha.{SERVICE_TYPE}"
    assert report["found"] == [{"name": "alpha", "url": url, "version": "9.9.9", "protocol": 1}]
    assert report["health"] == "alpha"  # the discovered URL leads to the node
    assert report["cli_status"] == 0
    assert [json.loads(line)["url"] for line in report["cli"]] == [url]
    assert report["after"] == []  # unregistered when the advertiser was cancelled
    # Advertising a loopback address is allowed (here it is the point) but warned about.
    assert len(report["warnings"]) == 1 and "127.0.0.1, a loopback address" in report["warnings"][0]
    assert "loopback address: only this machine can reach it" in report["cli_stderr"]
    assert "roomd --host" in report["cli_stderr"]
