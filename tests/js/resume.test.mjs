// Session resume on one node: after a drop the client continues its session, gets what it missed
// once and in order, sends again what was not acknowledged, and follows reconnect frames.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Lifecycle, RoomdClient } from "../../roomd/web/roomd.js";
import { NodeProcess, gatedSocket, next, record, startNodes, stopAll } from "./support.mjs";

const T = { timeout: 30000 };
let app;
const clients = [];

function client(options = {}) {
  const c = new RoomdClient(app.url, { backoff: { base: 0.02, maxDelay: 0.1 }, ...options });
  clients.push(c);
  return c;
}

const text = (content) => ({ type: "text", payload: { content } });
const contents = (pushes) => pushes.map((push) => push.data.payload.content);

before(async () => {
  [app] = await startNodes(NodeProcess.app());
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await stopAll();
});

describe("session resume", T, () => {
  test(
    "a connection the node dropped: resumed, what was missed comes once, in order",
    T,
    async () => {
      const Socket = gatedSocket();
      const alice = client({ user: "alice", WebSocket: Socket });
      const bob = client({ user: "bob" });
      const first = await alice.connect();
      await bob.connect();
      assert.equal(first.resumed, false);
      await alice.join("r");
      await bob.join("r");
      const messages = record(alice, "message");
      const one = next(alice, "message");
      await bob.sendText("one", { room: "r" });
      await one;
      const dropped = next(alice, Lifecycle.CLOSE);
      Socket.down = true; // alice stays away until what follows has been sent
      await alice.emit("drop-me");
      assert.deepEqual(await dropped, {
        code: 1006,
        reason: "connection lost",
        reconnect: true,
        local: true,
      });
      for (const word of ["two", "three"]) await bob.sendText(word, { room: "r" });
      await bob.sendText("dm", { user: "alice" });
      const reopened = next(alice, Lifecycle.OPEN);
      Socket.down = false;
      const opened = await reopened;
      assert.equal(opened.resumed, true);
      assert.equal(opened.session, first.session);
      assert.equal(opened.replayed, 3);
      assert.deepEqual([opened.rejoined, opened.gaps, opened.reason], [[], [], null]);
      const live = next(alice, "message", (push) => push.data.payload.content === "four");
      await bob.sendText("four", { room: "r" });
      await live;
      assert.deepEqual(contents(messages), ["one", "two", "three", "dm", "four"]);
      const room = messages.filter((push) => push.room !== null).map((push) => push.offset);
      assert.deepEqual(room, [1, 2, 3, 4]);
      assert.deepEqual(alice.positions.rooms, [
        { ns: "/", room: "r", epoch: messages[0].epoch, offset: 4 },
      ]);
    },
  );

  test("a send whose ack was lost is sent again with its cmid: delivered once", T, async () => {
    const Socket = gatedSocket();
    const carol = client({ user: "carol", WebSocket: Socket });
    const dave = client({ user: "dave" });
    await Promise.all([carol.connect(), dave.connect()]);
    await carol.join("s");
    await dave.join("s");
    const seen = record(dave, "message");
    const delivered = next(dave, "message");
    const cut = next(carol, Lifecycle.CLOSE);
    Socket.cutAfter((frame) => frame.event === "send"); // the connection goes before the ack
    const sent = carol.sendText("only once", { room: "s" });
    assert.equal((await cut).code, 4000);
    const push = await delivered; // the node handled it
    const reopened = next(carol, Lifecycle.OPEN);
    Socket.down = false;
    const opened = await reopened;
    assert.equal(opened.resumed, true);
    assert.equal(opened.resent, 1);
    const ack = await sent; // answered on the resumed session, from the node's memory of its cmid
    assert.equal(ack.messageId, push.data.messageId);
    assert.equal(ack.offset, push.offset);
    const later = next(dave, "message", (p) => p.data.payload.content === "after");
    await carol.sendText("after", { room: "s" });
    await later;
    assert.deepEqual(contents(seen), ["only once", "after"]);
  });

  test("a refused resume: the rooms are re-joined, unacknowledged calls fail", T, async () => {
    const Socket = gatedSocket();
    class ForgedResume extends Socket {
      send(text) {
        const frame = JSON.parse(text);
        if (frame.resume) frame.resume.token = "forged"; // not signed by the node
        super.send(JSON.stringify(frame));
      }
    }
    const erin = client({ user: "erin", WebSocket: ForgedResume });
    await erin.connect();
    await erin.join("t");
    const reopened = next(erin, Lifecycle.OPEN);
    Socket.cutAfter((frame) => frame.event === "echo");
    const call = erin.call("echo", "lost?").then(
      () => null,
      (error) => error,
    );
    Socket.down = false;
    const opened = await reopened;
    assert.deepEqual([opened.resumed, opened.reason], [false, "invalid_token"]);
    assert.deepEqual(opened.rejoined, [{ ns: "/", room: "t" }]);
    const error = await call;
    assert.equal(error?.code, "connection_lost");
    assert.match(error.message, /the session was not resumed/);
  });

  test("with resume off, a call in flight fails with ConnectionLost at once", T, async () => {
    const Socket = gatedSocket();
    const frank = client({ user: "frank", WebSocket: Socket, resume: false });
    await frank.connect();
    Socket.cutAfter((frame) => frame.event === "sleep");
    const error = await frank.call("sleep", 5).then(
      () => null,
      (e) => e,
    );
    assert.equal(error?.code, "connection_lost");
    assert.match(error.message, /connection closed \(4000 cut by the test\)/);
  });

  test("a reconnect frame is followed at once; its alternates when its URL fails", T, async () => {
    const gina = client({ user: "gina" });
    await gina.connect();
    await gina.join("u");
    const dead = "ws://127.0.0.1:1/ws"; // nothing listens there
    const moves = record(gina, Lifecycle.RECONNECTING);
    const reopened = next(gina, Lifecycle.OPEN);
    await gina.emit("move-me", { url: dead, alternates: [app.url] });
    const opened = await reopened;
    assert.deepEqual(moves[0], { attempt: 0, delay: 0, url: dead });
    assert.equal(moves[1].attempt, 1); // the named URL failed: the usual backoff, other URLs
    assert.equal(opened.url, app.url);
    assert.equal(opened.resumed, true);
    assert.deepEqual(gina.urls, [app.url, dead]);
  });

  test("reconnectNow() cuts a backoff delay short", T, async () => {
    const Socket = gatedSocket();
    const hugo = client({
      user: "hugo",
      WebSocket: Socket,
      backoff: { base: 20 },
      random: () => 0.5,
    });
    await hugo.connect();
    assert.equal(hugo.reconnectNow(), false); // open: nothing to cut short
    const waiting = next(hugo, Lifecycle.RECONNECTING);
    Socket.cut();
    assert.deepEqual(await waiting, { attempt: 1, delay: 10, url: app.url });
    const reopened = next(hugo, Lifecycle.OPEN);
    Socket.down = false; // the network is back: no need to wait 10 s
    assert.equal(hugo.reconnectNow(), true);
    assert.equal((await reopened).resumed, true);
  });
});
