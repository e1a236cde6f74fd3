"""The chat app in real Chromium (Playwright with the system's browser) against a real cluster:
a broker and two nodes as processes, plus a standalone node for the server list.

Screenshots of the main views, at laptop and phone sizes, go to test-artifacts/web/.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roomd.node import mint_token
from tests.cluster_support import free_ports, write_config
from tests.support import SECRET
from tests.web_support import REPO, LoggedProcess, chromium, missing

pytestmark = pytest.mark.browser

ARTIFACTS = REPO / "test-artifacts" / "web"
LAPTOP = {"width": 1366, "height": 800}
PHONE = {"width": 390, "height": 844}
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
QUIET = ("--stats-interval", "0")
WAIT_MS = 10_000  # the longest any page action or expectation waits


class Cluster:
    """A broker, nodes A and B in a cluster, and a standalone node C (all dev mode)."""

    def __init__(self, tmp: Path) -> None:
        ports = free_ports(7)
        self.ports = {"nodeA": ports[0], "nodeB": ports[1], "nodeC": ports[2]}
        bus = {"nodeA": ports[3], "nodeB": ports[4]}
        broker = (ports[5], ports[6])
        config = tmp / "cluster.toml"
        write_config(config, "broker", ["nodeA", "nodeB"], self.ports, bus, broker)
        python = sys.executable
        frontend, backend = (f"tcp://127.0.0.1:{port}" for port in broker)
        self.broker = LoggedProcess(
            "broker",
            [python, "-m", "broker", "--frontend", frontend, "--backend", backend, *QUIET],
        )
        node = [python, "-m", "roomd.cli"]
        self.nodes = {
            name: LoggedProcess(name, [*node, "--name", name, "--config", str(config)])
            for name in ("nodeA", "nodeB")
        }
        standalone = ["--name", "nodeC", "--dev", "--port", str(self.ports["nodeC"])]
        self.nodes["nodeC"] = LoggedProcess("nodeC", [*node, *standalone])

    def start(self) -> None:
        self.broker.start().wait_for(r'^\{"frontend"')
        for node in self.nodes.values():
            node.start()
        for name in ("nodeA", "nodeB"):
            self.nodes[name].wait_for("cluster ready")
        self.nodes["nodeA"].wait_for("node nodeB is up")
        self.nodes["nodeB"].wait_for("node nodeA is up")
        self.nodes["nodeC"].wait_for("listening on")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/"

    def stop(self) -> None:
        for proc in [*self.nodes.values(), self.broker]:
            proc.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    chromium()  # skip before starting anything when there is no browser
    handle = Cluster(tmp_path_factory.mktemp("web-cluster"))
    try:
        handle.start()
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def browser(cluster: Cluster) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright for Python is not installed (pip install -e '.[dev]')")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=str(chromium()), args=BROWSER_ARGS)
        try:
            yield instance
        finally:
            instance.close()


class Person:
    """One browser context (a person's browser) with its page."""

    def __init__(self, browser: Any, viewport: dict[str, int]) -> None:
        # Reduced motion: the app then has no transitions, so pictures never catch one midway.
        self.context = browser.new_context(viewport=viewport, reduced_motion="reduce")
        self.context.set_default_timeout(WAIT_MS)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def sign_in(self, url: str, name: str, page: Any = None) -> Any:
        page = page or self.page
        page.goto(url)
        page.wait_for_selector("#signin-node:not(:has-text('Connecting'))")
        page.fill("#signin-name", name)
        page.click("#signin-form button[type=submit]")
        page.wait_for_selector("#app:not([hidden])")
        page.wait_for_selector("#conn.online")
        return page

    def phone_menu(self, page: Any = None) -> None:
        page = page or self.page
        shown = page.evaluate("document.body.dataset.panel") == "sidebar"
        if page.is_visible("#open-sidebar") and not shown:
            page.click("#open-sidebar")

    def join(self, room: str, page: Any = None) -> None:
        page = page or self.page
        self.phone_menu(page)
        page.fill("#join-room", room)
        page.press("#join-room", "Enter")
        page.wait_for_selector(f"#chat-title:has-text('# {room}')")

    def say(self, text: str, page: Any = None) -> None:
        page = page or self.page
        page.click(".kinds [data-kind=text]")
        page.fill("#text", text)
        page.press("#text", "Enter")

    def sees_message(self, text: str, page: Any = None) -> None:
        (page or self.page).wait_for_selector(f".message:not(.pending):has-text({text!r})")

    def shot(self, name: str, page: Any = None) -> None:
        (page or self.page).screenshot(path=str(ARTIFACTS / f"{name}.png"))

    def close(self) -> None:
        assert self.errors == [], self.errors
        self.context.close()


@pytest.fixture(scope="module")
def people(browser: Any, cluster: Cluster) -> Iterator[tuple[Person, Person]]:
    alice = Person(browser, LAPTOP)
    bob = Person(browser, PHONE)
    try:
        yield alice, bob
    finally:
        alice.close()
        bob.close()


@pytest.fixture(autouse=True)
def evidence(request: pytest.FixtureRequest) -> Iterator[None]:
    """When a test fails, pictures of every page it used (test-artifacts/web/failed-*)."""
    yield
    report = getattr(request.node, "failed_call", None)
    if report and "people" in request.fixturenames:
        for person, name in zip(request.getfixturevalue("people"), ("alice", "bob"), strict=True):
            for index, page in enumerate(person.context.pages):
                page.screenshot(
                    path=str(ARTIFACTS / f"failed-{request.node.name}-{name}{index}.png")
                )


def test_sign_in_page(browser: Any, cluster: Cluster) -> None:
    for name, viewport in (("signin-laptop", LAPTOP), ("signin-phone", PHONE)):
        person = Person(browser, viewport)
        person.page.goto(cluster.url("nodeA"))
        person.page.wait_for_selector("#signin-node:has-text('nodeA')")
        person.page.fill("#signin-name", "bad\tname")
        person.page.click("#signin-form button[type=submit]")
        person.page.wait_for_selector("#signin-error:has-text('control characters')")
        person.shot(name)
        person.close()


def test_sign_in_with_a_token_in_the_page_url(browser: Any, cluster: Cluster) -> None:
    person = Person(browser, LAPTOP)
    page = person.page
    page.goto(f"{cluster.url('nodeA')}?token={mint_token(SECRET, 'tara')}")
    page.wait_for_selector("#conn.online")
    assert page.text_content("#me-name") == "tara"
    assert "token" not in page.url  # taken out of the address bar and the history
    page.goto(f"{cluster.url('nodeA')}?token=not-a-jwt")
    page.wait_for_selector("#signin-error:has-text('refused to sign you in')")
    assert page.is_visible("#signin")
    person.close()


def test_chat_room_direct_messages_presence_and_typing(
    people: tuple[Person, Person], cluster: Cluster
) -> None:
    alice, bob = people
    alice.sign_in(cluster.url("nodeA"), "alice")
    bob.sign_in(cluster.url("nodeB"), "bob")
    alice.join("lobby")
    bob.join("lobby")
    alice.page.wait_for_selector(".notice:has-text('bob joined')")
    alice.page.wait_for_selector("#members [data-user=bob]")

    # Typing, then the message, across the two nodes.
    alice.page.fill("#text", "Hello Bob")
    alice.page.dispatch_event("#text", "input")
    bob.page.wait_for_selector("#typing:has-text('alice is typing')")
    alice.page.press("#text", "Enter")
    bob.sees_message("Hello Bob")
    bob.say("Hi Alice! All good on node B.")
    alice.sees_message("All good on node B")

    # Images and files; the node's validation error shows next to the input.
    alice.page.click(".kinds [data-kind=image]")
    # Loopback URLs only: the browser fetches the image (the app's icon, served by the node).
    alice.page.fill("#image-url", f"{cluster.url('nodeA')}app/icon.svg")
    alice.page.fill("#image-width", "600")
    alice.page.fill("#image-height", "0")
    alice.page.click("#send")
    alice.page.wait_for_selector("#composer-error:has-text('payload.height')")
    assert alice.page.input_value("#image-height") == "0"  # kept for correction
    alice.page.fill("#image-height", "600")
    alice.page.click("#send")
    bob.page.wait_for_selector(
        ".message[data-type=image] img[alt='image 600\N{MULTIPLICATION SIGN}600']"
    )
    alice.page.click(".kinds [data-kind=file]")
    alice.page.fill("#file-url", f"{cluster.url('nodeA')}files/report.pdf")
    alice.page.fill("#file-size", "123456")
    alice.page.fill("#file-mime", "application/pdf")
    alice.page.click("#send")
    bob.page.wait_for_selector(".message[data-type=file]:has-text('report.pdf')")
    alice.page.click(".kinds [data-kind=text]")

    # Presence: each sees the other online (on the other node), and a status change.
    alice.page.wait_for_selector("#online [data-user=bob]")
    bob.phone_menu()
    bob.page.select_option("#status", "away")
    alice.page.wait_for_selector("#online [data-user=bob]:has-text('away')")
    online = alice.page.locator("#online [data-user]").evaluate_all(
        "(els) => els.map((e) => e.dataset.user)"
    )
    assert online == sorted(set(online)) and {"alice", "bob"} <= set(online)

    # A direct message; alice's other tab (on node B) gets the copy.
    alice_tab2 = alice.context.new_page()
    alice_tab2.on("pageerror", lambda error: alice.errors.append(str(error)))
    alice.sign_in(cluster.url("nodeB"), "alice", alice_tab2)
    alice.page.click("#online [data-user=bob]")
    alice.page.wait_for_selector("#chat-title:has-text('@ bob')")
    alice.say("psst, a direct message")
    alice.page.wait_for_selector(".message.mine:has-text('psst'):not(.pending)")
    bob.phone_menu()
    bob.page.wait_for_selector("#dms [data-conv='dm:alice'] .badge")
    bob.page.click("#dms [data-conv='dm:alice']")
    bob.sees_message("psst, a direct message")
    alice_tab2.click("#dms [data-conv='dm:bob']")
    alice_tab2.wait_for_selector(".message.mine:has-text('psst')")
    alice_tab2.close()

    # The main views, laptop and phone.
    alice.page.click("#rooms [data-conv]")
    alice.page.wait_for_selector(".message:has-text('report.pdf')")
    alice.shot("chat-laptop")
    bob.shot("dm-phone")
    bob.phone_menu()
    bob.shot("sidebar-phone")
    bob.page.click("#close-sidebar")


def test_several_servers(people: tuple[Person, Person], cluster: Cluster) -> None:
    alice, _ = people
    page = alice.page
    page.click("#add-server")
    page.fill("#server-url", "ws://127.0.0.1:1")
    page.click("#server-add")
    page.wait_for_selector("#server-error:has-text('cannot reach')")
    page.fill("#server-url", f"127.0.0.1:{cluster.ports['nodeC']}")
    page.click("#server-add")
    server_c = f"[data-server='127.0.0.1:{cluster.ports['nodeC']}']"
    page.wait_for_selector(f"#servers {server_c}[data-status=online]")
    page.wait_for_selector("#server-name:has-text('nodeC')")
    alice.join("lobby")  # the same name on another server: another room
    alice.say("only on node C")
    alice.sees_message("only on node C")
    page.wait_for_selector("#online [data-user=alice]")
    alice.shot("servers-laptop")
    first = f"[data-server='127.0.0.1:{cluster.ports['nodeA']}']"
    page.click(f"#servers {first}")
    page.wait_for_selector("#server-name:has-text('nodeA')")
    page.click("#rooms [data-conv]")
    page.wait_for_selector(".message:has-text('Hello Bob')")
    assert page.locator(".message:has-text('only on node C')").count() == 0
    page.wait_for_selector(f"#servers {server_c}[data-status=online]")  # still connected


def test_failover_to_the_other_node(people: tuple[Person, Person], cluster: Cluster) -> None:
    alice, bob = people
    bob.phone_menu()
    bob.page.click("#rooms [data-conv]")
    cluster.nodes["nodeB"].kill()
    bob.page.wait_for_selector("#conn.offline")
    bob.shot("reconnecting-phone")
    bob.page.wait_for_selector("#conn.online", timeout=15_000)
    bob.phone_menu()
    bob.page.wait_for_selector("#server-name:has-text('nodeA')")
    bob.page.click("#close-sidebar")
    # The room was re-joined on node A: messages flow both ways again.
    alice.say("are you back?")
    bob.sees_message("are you back?")
    bob.say("yes, through node A")
    alice.sees_message("yes, through node A")
