"""roomd bench's session and fault workloads: the accounting (pure: it must see a delivery that
is missing, one that came twice, a wrong presence push), the load generator's sessions (what
a reconnect presents and where it goes, as the Trio client decides), and tiny end-to-end runs
of the real tool (no timing asserts)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from roomd.bench._clients import Clients, Member
from roomd.bench._driver import ACK_BASE, Phase
from roomd.bench._engine import OPEN, Conn, Engine, Target
from roomd.bench._faults import merge_collected, tally
from roomd.bench._report import FAULT_TARGET, medians, render, render_medians
from roomd.bench._resume import Session
from roomd.bench._run import _exact
from roomd.bench._sessions import session_figures
from roomd.protocol import CloseCode

S = 1_000_000_000  # ns

# Sessions of the load generator --------------------------------------------------------------


def _session() -> Session:
    urls = [("127.0.0.1", 9000), ("127.0.0.1", 9001), ("127.0.0.1", 9002)]
    return Session("alice", urls, random.Random(1))


def test_a_session_presents_its_last_welcome_and_its_positions() -> None:
    session = _session()
    assert "resume" not in session.hello()  # nothing to continue yet
    welcome = {"session": "s1", "resumeToken": "t1", "seq": 0, "resumed": False}
    assert not session.welcomed(welcome | {"inbox": {"epoch": "", "offset": 0}}, 1)
    session.joined("/", "bench", {"room": "bench", "epoch": "e1", "offset": 7})
    session.saw({"seq": 3, "room": {"ns": "/", "room": "bench"}, "epoch": "e1", "offset": 9})
    session.saw({"seq": 4, "epoch": "i1", "offset": 2})  # a direct message: the inbox
    session.saw({"seq": 5, "event": "room.joined"})  # not in a stream
    resume = session.hello()["resume"]
    assert resume == {
        "session": "s1",
        "token": "t1",
        "seq": 5,
        "rooms": [{"ns": "/", "room": "bench", "epoch": "e1", "offset": 9}],
        "inbox": {"epoch": "i1", "offset": 2},
    }


def test_a_session_reconnects_as_the_trio_client_decides() -> None:
    session = _session()
    session.welcomed({"session": "s1", "resumeToken": "t1", "seq": 0, "resumed": False}, 0)
    delay = session.dropped(None, True, 10, cause="connection lost")
    assert delay is not None and 0 <= delay < 0.5  # the default backoff, first attempt
    assert session.reconnecting and session.address == ("127.0.0.1", 9000)  # its node first
    session.connecting(11)
    delay = session.dropped(None, False, 12, cause="ECONNREFUSED")  # could not connect
    assert delay is not None and 0 <= delay < 1.0
    assert session.address == ("127.0.0.1", 9001)  # the next node
    session.connecting(13)
    session.moved("ws://127.0.0.1:9002/ws", ["ws://127.0.0.1:9003/ws"])  # a reconnect frame
    assert session.dropped(CloseCode.GOING_AWAY, True, 14, cause="reconnect frame") == 0.0
    assert session.address == ("127.0.0.1", 9002) and ("127.0.0.1", 9003) in session.urls
    session.connecting(15)
    welcome = {"session": "s1", "resumeToken": "t2", "seq": 9, "resumed": True, "replayed": 2}
    assert session.welcomed(welcome | {"node": "c"}, 16)
    assert session.reconnecting  # until the replay is in
    session.replay_done(17)
    (record,) = session.records
    assert (record["dropped_ns"], record["connect_ns"], record["welcome_ns"]) == (10, 15, 16)
    assert (record["resumed"], record["replayed"], record["attempts"]) == (True, 2, 3)
    assert record["replay_done_ns"] == 17 and record["to"] == "127.0.0.1:9002"
    assert session.dropped(CloseCode.REPLACED, True, 20, cause="closed 4012") is None  # terminal


# Accounting of a session phase -----------------------------------------------------------------


def _phase(drop_message: bool) -> dict[str, Any]:
    """A phase of one sender and two receivers over five messages: 0-2 acknowledged, 3
    refused, 4 never answered; every receiver gets 0-4, one of them 0 twice, except that
    receiver r2 misses message 1 if ``drop_message``."""
    engine = Engine()
    conns = {}
    for user in ("s", "r1", "r2"):
        conn = Conn(Target(user, "127.0.0.1", 1))
        conn.state = OPEN
        engine.by_user[user] = conns[user] = conn
    spec = {
        "id": 1,
        "messages": 5,
        "senders_total": 1,
        "acks": True,
        "senders": [],
        "receivers": [{"user": "r1", "expect": [0]}, {"user": "r2", "expect": [0]}],
    }
    phase = Phase(engine, spec)
    phase.count_sent = 5
    for k in range(3):
        phase.acked(conns["s"], {"type": "ack", "id": ACK_BASE + k, "result": {}}, 1)
    phase.acked(conns["s"], {"id": ACK_BASE + 3, "error": {"code": "x", "message": "no"}}, 1)
    for user in ("r1", "r2"):
        for k in range(5):
            if not (drop_message and user == "r2" and k == 1):
                phase.record(conns[user], [1, 0, k, 0, "x"], 10, True)
    phase.record(conns["r1"], [1, 0, 0, 0, "x"], 11, True)
    expected, received, extra = phase._acked_accounting()
    for conn in conns.values():
        conn.sock.close()
    return {"expected": expected, "received": received, **extra}


def test_the_session_accounting_counts_what_was_acknowledged() -> None:
    clean = _phase(drop_message=False)
    assert (clean["expected"], clean["received"]) == (6, 6)  # 3 acknowledged, 2 receivers
    assert (clean["acked"], clean["refused"], clean["unacked"]) == (3, 1, 1)
    assert clean["unacked_delivered"] == 4  # 3 and 4 arrived: allowed, not expected
    assert clean["lost_examples"] == []


def test_the_session_accounting_sees_a_missing_delivery() -> None:
    lossy = _phase(drop_message=True)
    assert lossy["expected"] - lossy["received"] == 1
    assert lossy["lost_examples"] == ["r2: [1]"]


def _session_result(**changes: Any) -> dict[str, Any]:
    latency = {"count": 1, "p50": 1.0, "p99": 2.0, "max": 3.0, "mean": 1.0}
    record = {"user": "r1", "dropped_ns": 2 * S, "connect_ns": 3 * S, "welcome_ns": 3 * S,
              "replay_done_ns": 4 * S, "resumed": True, "replayed": 5, "attempts": 2}  # fmt: skip
    result: dict[str, Any] = {
        "timed_out": False, "lost": 0, "duplicates": 0, "sent": 10, "acked": 10,
        "unacked": 0, "unacked_delivered": 0, "receivers": 2, "affected": 1,
        "latency_ms": {"all": latency}, "sent_ns": [S // 2, 2 * S], "arrivals": [0, S, 1, 4 * S],
        "reconnect_log": [record], "fault": {"at_ns": 1 * S, "exited_ns": None},
    }  # fmt: skip
    result.update(changes)
    result.update(session_figures("crash", result, {"r1"}))
    return result


def test_session_figures_and_their_verdicts() -> None:
    result = _session_result()
    assert result["fault_s"] == {"all_back": 3.0, "node_empty": 1.0, "exited": None}
    assert (result["resumed"], result["refused_resumes"], result["replayed"]) == (1, 0, 5)
    assert result["resume_ms"]["max"] == 1000.0  # connect to the end of the replay
    assert result["latency_during_ms"]["count"] == 1  # message 1, sent after the fault
    assert _exact(result)
    refused = _session_result(reconnect_log=[{**result["reconnect_log"][0], "resumed": False}])
    assert refused["refused_resumes"] == 1 and not _exact(refused)
    assert not _exact(_session_result(lost=1))
    documents = [{"results": {"crash": _session_result()}}, {"results": {"crash": refused}}]
    table = medians(documents)
    assert table["crash"]["refused_resumes"] == 1 and table["crash"]["target"]["met"] is False
    assert "crash" in render_medians(table, documents)


# Accounting of a fault -------------------------------------------------------------------------


def _raw(**changes: Any) -> dict[str, Any]:
    """Three users; u0 sends room messages r0, r1 and a direct message to u1; u2 was on the
    node that failed at 10 s (it ended at 11 s)."""
    sent = [["u0:r0", "u0", None, 9 * S, 9 * S, None],
            ["u0:r1", "u0", None, 12 * S, 12 * S, None],
            ["u0>u1:d0", "u0", "u1", 12 * S, 12 * S, None],
            ["u0:r2", "u0", None, 12 * S, 0, "RequestTimeout"]]  # fmt: skip
    everyone = [["u0:r0", 9 * S, "room"], ["u0:r1", 12 * S, "room"]]
    members = [
        {"user": "u0", "deliveries": list(everyone), "presence": [], "opens": []},
        {"user": "u1", "deliveries": [*everyone, ["u0>u1:d0", 12 * S, "dm"]],
         "presence": [["room.left", "u2", 10 * S + S // 2], ["room.joined", "u2", 12 * S]],
         "opens": []},
        {"user": "u2", "deliveries": list(everyone), "presence": [],
         "opens": [{"at_ns": 12 * S, "reconnect": True, "resumed": True, "node": "b",
                    "reason": None, "replayed": 1, "resent": 0}]},
    ]  # fmt: skip
    raw: dict[str, Any] = {"timed_out": False, "collect_s": 0.1, "sent": sent, "members": members}
    raw.update(changes)
    return raw


def test_a_fault_that_cost_nothing() -> None:
    result = tally(_raw(), 10 * S, 11 * S, {"u2"})
    assert (result["lost"], result["duplicates"], result["wrong_left"]) == (0, 0, 0)
    assert (result["acked"], result["unacked"], result["unacked_arrived"]) == (3, 1, 0)
    assert (result["hit_left"], result["hit_joined"], result["hit_shown_s"]) == (1, 1, 0.5)
    assert (result["reconnects"], result["resumed"], result["converged_s"]) == (1, 1, 1.0)
    assert result["order_violations"] == 0 and result["shown_left_at_end"] == 0


def test_a_fault_that_lost_a_delivery_duplicated_one_and_told_a_lie() -> None:
    raw = _raw()
    u0, u1, u2 = raw["members"]
    u2["deliveries"].remove(["u0:r1", 12 * S, "room"])  # acknowledged, never came
    u0["deliveries"].append(["u0:r0", 13 * S, "room"])  # came twice
    u1["presence"].append(["room.left", "u0", 12 * S])  # u0 never left
    result = tally(raw, 10 * S, 11 * S, {"u2"})
    assert (result["lost"], result["lost_during"], result["lost_after"]) == (1, 1, 0)
    assert result["lost_examples"] == ["u0:r1 (sent +2.00 s, acked +2.00 s; 1 of 3 lack it: u2)"]
    assert (result["duplicates"], result["wrong_left"], result["shown_left_at_end"]) == (1, 1, 1)
    assert result["duplicate_examples"] == [
        "u0:r0 to u0 (room, -1.000 s)",
        "u0:r0 to u0 (room, +3.000 s)",
    ]
    assert not _exact(result | {"target": None})
    late = tally(_raw(), 0, 1 * S, set())  # after the convergence: counted after
    assert late["lost"] == 0 and late["hit_left"] == 0 and late["wrong_left"] == 1


def test_a_user_missing_from_a_members_view_at_the_end_is_counted() -> None:
    raw = _raw()
    u0, u1, u2 = raw["members"]
    u0["view"] = u1["view"] = ["u0", "u1", "u2"]
    u2["view"] = ["u1", "u2"]  # u0 never left: the node u2 asks is wrong
    result = tally(raw, 10 * S, 11 * S, {"u2"})
    assert (result["absent_at_end"], result["views_failed"]) == (1, 0)
    assert result["absent_examples"] == ["u0 not in u2's view"]
    assert not _exact(result | {"target": None})
    u2["view"] = None  # (its call failed: not counted as absent, counted apart)
    result = tally(raw, 10 * S, 11 * S, {"u2"})
    assert (result["absent_at_end"], result["views_failed"]) == (0, 1)
    # Nothing lost, but a view unread says nothing of who is in it: the target is not met.
    assert _exact(result | {"target": None})
    text, met = FAULT_TARGET.check(result)
    assert not met and "views unread 1" in text


def test_what_client_processes_collected_is_merged() -> None:
    raw = _raw()
    first, second = dict(raw, members=raw["members"][:2]), dict(raw, members=raw["members"][2:])
    first["sent"], second["sent"] = raw["sent"][:2], raw["sent"][2:]
    second.update(timed_out=True, collect_s=0.5)
    merged = merge_collected([first, second])
    assert merged == raw | {"timed_out": True, "collect_s": 0.5}


def test_a_client_process_waits_for_what_other_processes_sent_to_its_members() -> None:
    """What a member is owed, whoever sent it: a room message to everyone, a direct message
    to its addressee only (the others' are another process's to check)."""
    clients = Clients(None)  # type: ignore[arg-type]  # (no client is opened)
    here = Member("u1", None)  # type: ignore[arg-type]
    clients.members.append(here)
    expect: list[tuple[str, str | None]] = [("u0:r0", None), ("u0>u1:d0", "u1"), ("u1>u2:d0", "u2")]
    assert not clients.complete(expect)
    here.deliveries.append(["u0:r0", 1, "room"])
    assert not clients.complete(expect)
    here.deliveries.append(["u0>u1:d0", 2, "dm"])
    assert clients.complete(expect)  # (u1>u2:d0 is owed to a member of another process)


class _Asked:
    """A member's client that answers ``room.members`` (or never does)."""

    def __init__(self, answer: list[dict[str, Any]] | None) -> None:
        self.answer = answer

    async def members(self, room: str) -> list[dict[str, Any]]:
        if self.answer is None:
            await trio.sleep_forever()  # (a client of a saturated process: no answer in time)
        assert self.answer is not None
        return self.answer


async def test_a_members_view_not_had_in_time_counts_as_failed_and_the_rest_are_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The end views are asked within a bound: a process of hundreds of clients must still
    answer ``collect`` before the orchestrator gives up on it (it did not, at 1,600 users)."""
    clients = Clients(None)  # type: ignore[arg-type]
    quick = Member("u1", _Asked([{"user": "u2"}, {"user": "u1"}]))  # type: ignore[arg-type]
    stuck = Member("u2", _Asked(None))  # type: ignore[arg-type]
    clients.members += [quick, stuck]
    start = trio.current_time()
    with trio.fail_after(60):  # (virtual seconds)
        views = await clients._views(5.0)
    assert trio.current_time() - start == pytest.approx(5.0)
    assert views == {"u1": ["u1", "u2"], "u2": None}


# End to end ------------------------------------------------------------------------------------


async def _bench(tmp_path: Path, *args: str, limit: float = 60) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "roomd.cli", "bench", "--nodes", "2", *args, "--json", str(out)]
    with trio.fail_after(limit):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    report = done.stdout.decode()
    assert done.returncode == 0, report + done.stderr.decode()[-3000:]
    document: dict[str, Any] = json.loads(out.read_text())
    assert render(document)  # (the report renders what the run stored)
    return document["results"]


@pytest.mark.cluster
async def test_bench_resume_and_crash_smoke(tmp_path: Path) -> None:
    """Receivers dropped, a node killed: each reconnect resumed, nothing lost or twice."""
    results = await _bench(
        tmp_path, "--workloads", "resume,crash", "--receivers", "9", "--session-messages",
        "30", "--rate", "15", "--resume-fraction", "0.5", "--resume-pause", "0.3",
        "--fault-at", "0.5", "--timeout", "20",
    )  # fmt: skip
    for name in ("resume", "crash"):
        r = results[name]
        assert (r["lost"], r["duplicates"], r["timed_out"]) == (0, 0, False), (name, r)
        assert r["acked"] == r["sent"] == 30 and r["received"] == r["expected"] == 9 * 30
        assert r["reconnects"] == r["resumed"] >= r["affected"] > 0, (name, r)
        assert r["refused_resumes"] == 0 and r["target"]["met"]
    assert results["resume"]["affected"] in (4, 5)  # half of the nine
    assert results["crash"]["affected"] in (4, 5)  # its share of the nine
    assert results["crash"]["fault_s"]["all_back"] is not None


@pytest.mark.cluster
async def test_bench_drain_and_a_node_restarted_smoke(tmp_path: Path) -> None:
    """Two drivers: the receivers, and the fault's users (two client processes), shared."""
    results = await _bench(
        tmp_path, "--workloads", "drain,fault-restart", "--drivers", "2", "--receivers", "6",
        "--session-messages", "30", "--rate", "15", "--fault-at", "0.5", "--drain-period",
        "0.3", "--fault-users", "6", "--fault-room-rate", "6", "--fault-dm-rate", "6",
        "--fault-after", "1.5", "--timeout", "20",
    )  # fmt: skip
    drain = results["drain"]
    assert (drain["lost"], drain["duplicates"], drain["refused_resumes"]) == (0, 0, 0), drain
    assert drain["affected"] == 3 and drain["fault_s"]["exited"] is not None
    fault = results["fault-restart"]
    assert (fault["lost"], fault["duplicates"], fault["timed_out"]) == (0, 0, False), fault
    assert (fault["wrong_left"], fault["wrong_joined"], fault["refused_resumes"]) == (0, 0, 0)
    assert fault["acked"] > 0 and fault["reconnects"] >= fault["hit"] == 3
    assert fault["clients"] == 2
    assert (fault["absent_at_end"], fault["views_failed"]) == (0, 0)
