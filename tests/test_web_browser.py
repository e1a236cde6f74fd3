"""The chat app and the operator view in real Chromium (Playwright with the system's browser)
against a real cluster: a broker and two nodes as processes, plus a standalone node for the
server list, and a node on its first run (no secret configured).

Screenshots of the main views, at laptop and phone sizes, go to test-artifacts/web/.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from roomd.node import mint_token
from tests.cluster_support import cluster_keys, free_ports, write_config
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
        keys = cluster_keys(tmp / "keys", ["broker", "nodeA", "nodeB"])
        write_config(config, "broker", ["nodeA", "nodeB"], self.ports, bus, broker, keys)
        python = sys.executable
        frontend, backend = (f"tcp://127.0.0.1:{port}" for port in broker)
        endpoints = ["--frontend", frontend, "--backend", backend, "--keys", str(keys)]
        self.broker = LoggedProcess("broker", [python, "-m", "broker", *endpoints, *QUIET])
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

    def messages(self, page: Any = None) -> list[str]:
        """The texts of the conversation shown, in order."""
        return list(
            (page or self.page)
            .locator("#messages .message .text")
            .evaluate_all("(els) => els.map((e) => e.textContent)")
        )

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


def test_history_on_join(browser: Any, cluster: Cluster) -> None:
    carol = Person(browser, LAPTOP)
    carol.sign_in(cluster.url("nodeB"), "carol")
    carol.join("lobby")  # its messages so far, from the room's history (numbered on node A)
    carol.sees_message("All good on node B")
    texts = carol.messages()
    assert texts[-2:] == ["Hello Bob", "Hi Alice! All good on node B."], texts
    assert len(texts) == len(set(texts))
    carol.page.wait_for_selector(".message[data-type=image]")
    carol.shot("history-laptop")
    carol.close()


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


def test_a_refused_resume_is_a_new_session_resynchronised(
    people: tuple[Person, Person], cluster: Cluster
) -> None:
    """Node C restarts: it knows nothing of alice's session. The page says so, re-joins and
    resynchronises the room from its history, and shows every message once."""
    alice, _ = people
    page = alice.page
    server_c = f"#servers [data-server='127.0.0.1:{cluster.ports['nodeC']}']"
    page.click(server_c)
    page.wait_for_selector("#server-name:has-text('nodeC')")
    page.click("#rooms [data-conv]")
    page.wait_for_selector(".message:has-text('only on node C')")
    cluster.nodes["nodeC"].kill()
    cluster.nodes["nodeC"].start().wait_for("listening on")
    page.wait_for_selector("#conn-long:has-text('new session')", timeout=15_000)
    note = page.text_content("#conn-long") or ""
    assert "new session (unknown session)" in note and "resynchronised #lobby" in note, note
    assert alice.messages().count("only on node C") == 1
    alice.say("after the restart")
    alice.sees_message("after the restart")
    page.click(f"#servers [data-server='127.0.0.1:{cluster.ports['nodeA']}']")
    page.wait_for_selector("#server-name:has-text('nodeA')")


def test_operator_view(browser: Any, cluster: Cluster) -> None:
    from playwright.sync_api import expect

    for name, viewport in (("admin-laptop", LAPTOP), ("admin-phone", PHONE)):
        operator = Person(browser, viewport)
        page = operator.page
        page.goto(f"{cluster.url('nodeA')}admin")  # a development node: no token needed
        for node in ("nodeA", "nodeB"):
            page.wait_for_selector(f"#nodes [data-node={node}][data-status=up]")
        lobby = page.wait_for_selector("#rooms [data-room=lobby] .members")
        assert lobby is not None and int(lobby.text_content() or 0) >= 2
        page.wait_for_selector("#bus-state:has-text('live')")
        page.wait_for_selector("#live.ok")
        users = page.text_content("[data-card=users] .card-value") or ""
        assert int(users) >= 3  # alice, bob and the operator at least
        expect(page.locator(".spark-line")).to_have_count(4)  # two samples or more: charts
        page.fill("#room-filter", "no-such-room")
        page.wait_for_selector("#rooms .empty:has-text('No room matches')")
        page.fill("#room-filter", "")
        page.wait_for_selector("#rooms [data-room=lobby]")
        page.locator("#room-filter").blur()
        operator.shot(name)
        operator.close()


def test_resume_on_the_other_node_after_its_node_was_killed(
    people: tuple[Person, Person], cluster: Cluster
) -> None:
    """bob's node dies while alice writes to the room and to bob: bob's page resumes its
    session on the other node and shows each message once, in order."""
    alice, bob = people
    bob.phone_menu()
    bob.page.click("#rooms [data-conv]")
    bob.page.wait_for_selector("#chat-title:has-text('# lobby')")
    before = bob.messages()
    # Offline, its reconnects wait until what it misses has been sent (and numbered on node A).
    bob.context.set_offline(True)
    cluster.nodes["nodeB"].kill()
    bob.page.wait_for_selector("#conn.offline")
    bob.shot("reconnecting-phone")
    cluster.nodes["nodeA"].wait_for("node nodeB is down")
    alice.page.click("#rooms [data-conv]")
    alice.page.wait_for_selector("#chat-title:has-text('# lobby')")
    meanwhile = [f"while you were away ({i})" for i in range(1, 4)]
    for text in meanwhile:
        alice.say(text)
        alice.sees_message(text)
    alice.page.click("#dms [data-conv='dm:bob']")
    alice.page.wait_for_selector("#chat-title:has-text('@ bob')")
    alice.say("a direct message meanwhile")
    alice.page.wait_for_selector(
        ".message.mine:has-text('a direct message meanwhile'):not(.pending)"
    )
    bob.context.set_offline(False)  # the page reconnects at once ("online")
    bob.page.wait_for_selector("#conn.online", timeout=15_000)
    note = bob.page.text_content("#conn-long") or ""
    assert re.search(r"resumed, \d+ messages? replayed", note), note
    assert "new session" not in note and "resynchronised" not in note
    bob.shot("resumed-phone")
    bob.page.set_viewport_size(LAPTOP)  # the whole connection line
    bob.page.wait_for_selector("#conn-long:has-text('replayed')")
    bob.shot("resumed-laptop")
    bob.page.set_viewport_size(PHONE)
    assert bob.messages() == before + meanwhile  # each once, in order
    bob.phone_menu()
    bob.page.wait_for_selector("#server-name:has-text('nodeA')")
    bob.page.click("#dms [data-conv='dm:alice']")
    bob.page.wait_for_selector("#chat-title:has-text('@ alice')")
    bob.sees_message("a direct message meanwhile")
    assert bob.messages().count("a direct message meanwhile") == 1
    # Live again both ways, and alice's online list (pushed) has bob back.
    alice.page.wait_for_selector("#online [data-user=bob]:has-text('away')")  # as he chose
    bob.say("back, nothing missed")
    alice.sees_message("back, nothing missed")


def test_first_run_links_open_the_app_and_the_operator_view(browser: Any, tmp_path: Path) -> None:
    """`roomd --name serverA --port N` with no secret configured: the links it prints sign in."""
    env = {k: v for k, v in os.environ.items() if k not in ("ROOMD_SECRET", "ROOMD_STATE_DIR")}
    env["XDG_STATE_HOME"] = str(tmp_path)
    (port,) = free_ports(1)
    argv = [sys.executable, "-m", "roomd.cli", "--name", "serverA", "--port", str(port)]
    node = LoggedProcess("first-run", argv, env).start()
    try:
        chat = node.wait_for(r"open the chat, signed in as (\S+): (http://\S+)")
        admin = node.wait_for(r"the operator view: (http://\S+)")
        person = Person(browser, LAPTOP)
        page = person.page
        page.goto(chat.group(2))
        page.wait_for_selector("#conn.online")
        assert page.text_content("#me-name") == chat.group(1)
        person.join("welcome")
        view = person.context.new_page()  # beside the chat, which stays in its room
        view.goto(admin.group(1))
        view.wait_for_selector("#nodes [data-node=serverA][data-status=up]")
        view.wait_for_selector("#rooms [data-room=welcome]")
        assert "token" not in view.url
        # The chat's token is not an operator's: the view says so, and how to get one.
        view.goto(chat.group(2).replace("/?token=", "/admin?token="))
        view.wait_for_selector("#gate-error:has-text('not an operator')")
        person.shot("admin-gate-laptop", view)
        person.close()
    finally:
        node.kill()
