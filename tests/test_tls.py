"""wss:// served by the node itself: the handshake and the frames over TLS, backpressure through
TLS records, compression over TLS, certificate reload (SIGHUP), and clients that do not speak TLS.
Certificates are made by the tests (trustme)."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trustme

from roomd import Node
from roomd.client import open_client
from tests.cluster_support import free_ports


def issue(tmp_path: Path, name: str) -> tuple[trustme.CA, Path, Path]:
    """A CA and a certificate for 127.0.0.1 / localhost, written as PEM files."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return ca, chain, key


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    return issue(tmp_path, "node")


@pytest.fixture
async def tls_node(
    start_node: Callable[..., Any], certificate: tuple[trustme.CA, Path, Path]
) -> Node:
    _, chain, key = certificate
    node: Node = await start_node(tls={"cert": str(chain), "key": str(key)})
    return node


async def https_get(port: int, path: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    stream = await trio.open_ssl_over_tcp_stream(
        "127.0.0.1", port, ssl_context=context, https_compatible=True
    )
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def refused_certificate(port: int, context: ssl.SSLContext) -> None:
    with pytest.raises(trio.BrokenResourceError) as info:
        await https_get(port, "/health", context)
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)


async def test_wss_round_trip_compressed_and_not(
    tls_node: Node, certificate: tuple[trustme.CA, Path, Path]
) -> None:
    context = trusting(certificate[0])
    url = f"wss://127.0.0.1:{tls_node.port}"
    big = "tls and deflate " * 200
    with trio.fail_after(10):
        async with (
            open_client(url, user="alice", ssl_context=context) as alice,
            open_client(url, user="bob", ssl_context=context, compress=False) as bob,
        ):
            await alice.join("r")
            await bob.join("r")
            with alice.subscribe("message") as at_alice, bob.subscribe("message") as at_bob:
                await bob.send_text(big, room="r")
                await alice.send_text("small", room="r")
                for messages in (at_alice, at_bob):
                    got = [(await messages.receive()).data["payload"]["content"] for _ in range(2)]
                    assert got == [big, "small"]
        status, body = await https_get(tls_node.port or 0, "/health", context)
    assert status == 200 and orjson.loads(body)["status"] == "ok"
    assert tls_node.load()["url"].startswith("wss://")


async def test_a_slow_reader_over_tls_gets_everything_in_order(
    start_node: Callable[..., Any], certificate: tuple[trustme.CA, Path, Path]
) -> None:
    """Pushes that fill the kernel's buffer: TLS records are written in parts as it drains."""
    _, chain, key = certificate
    node: Node = await start_node(
        tls={"cert": str(chain), "key": str(key)}, limits={"outbox_max_bytes": 8 * 2**20}
    )
    context = trusting(certificate[0])
    url = f"wss://127.0.0.1:{node.port}"
    with trio.fail_after(20):
        async with open_client(url, user="reader", ssl_context=context, compress=False) as reader:
            await reader.join("r")
            with reader.subscribe("blob", size=1000) as blobs:
                for k in range(400):  # 400 x 16 KB = 6.4 MB, queued at once
                    node.send_to_room("r", "blob", {"k": k, "pad": "x" * 16_000})
                assert any(c.outlet.queued_bytes > 2**20 for c in node.hub.connections.values())
                for k in range(400):
                    assert (await blobs.receive()).data["k"] == k


async def test_plain_and_garbage_clients_are_dropped_and_others_served(
    tls_node: Node, certificate: tuple[trustme.CA, Path, Path]
) -> None:
    port = tls_node.port or 0
    with trio.fail_after(5):
        for garbage in (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello"):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(garbage)
                answer = b""
                while chunk := await stream.receive_some(4096):
                    answer += chunk
                assert b"HTTP" not in answer  # no plaintext answer from a TLS port
        status, _ = await https_get(port, "/health", trusting(certificate[0]))
        assert status == 200
        await refused_certificate(port, ssl.create_default_context())  # not trusted


async def test_reload_takes_the_new_certificate_for_new_connections(
    tls_node: Node, certificate: tuple[trustme.CA, Path, Path], tmp_path: Path
) -> None:
    old_ca, chain, key = certificate
    new_ca, new_chain, new_key = issue(tmp_path, "new")
    url = f"wss://127.0.0.1:{tls_node.port}"
    with trio.fail_after(10):
        async with open_client(url, user="early", ssl_context=trusting(old_ca)) as early:
            await early.join("r")
            chain.write_bytes(b"not a certificate")  # a broken file: the old one stays
            assert not tls_node.reload_tls()
            assert (await https_get(tls_node.port or 0, "/health", trusting(old_ca)))[0] == 200
            os.replace(new_chain, chain)
            os.replace(new_key, key)
            assert tls_node.reload_tls()
            await refused_certificate(tls_node.port or 0, trusting(old_ca))
            async with open_client(url, user="late", ssl_context=trusting(new_ca)) as late:
                await late.join("r")
                with late.subscribe("message") as messages:
                    await early.send_text("still here", room="r")  # the old connection works
                    assert (await messages.receive()).data["payload"]["content"] == "still here"


async def test_roomd_reloads_its_certificate_on_sighup(tmp_path: Path) -> None:
    old_ca, chain, key = issue(tmp_path, "node")
    new_ca, new_chain, new_key = issue(tmp_path, "new")
    (port,) = free_ports(1)
    argv = [sys.executable, "-m", "roomd.cli", "--port", str(port), "--dev"]
    argv += ["--tls-cert", str(chain), "--tls-key", str(key)]
    proc = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        with trio.fail_after(10):
            assert proc.stderr is not None
            log = b""

            async def wait_log(text: bytes) -> None:
                nonlocal log
                while text not in log:
                    chunk = await proc.stderr.receive_some(4096)  # type: ignore[union-attr]
                    assert chunk, log
                    log += chunk

            await wait_log(b"listening on")
            assert (await https_get(port, "/health", trusting(old_ca)))[0] == 200
            os.replace(new_chain, chain)
            os.replace(new_key, key)
            proc.send_signal(signal.SIGHUP)
            await wait_log(b"TLS certificate reloaded")
            assert (await https_get(port, "/health", trusting(new_ca)))[0] == 200
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    from tests.support import make_config

    _, chain, key = issue(tmp_path, "node")
    with pytest.raises(ValueError, match="go together"):
        Node(make_config(tls={"cert": str(chain)}))
    with pytest.raises(ValueError, match="cannot use"):
        Node(make_config(tls={"cert": str(key), "key": str(key)}))
