// roomd.js against real nodes: calls, typed errors, pushes, the node's requests, heartbeat, close.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  AckError,
  ClientClosed,
  HandlerError,
  Lifecycle,
  RequestTimeout,
  RoomdClient,
  fetchHealth,
} from "../../roomd/web/roomd.js";
import { NodeProcess, next, record, rejection, startNodes, stopAll, within } from "./support.mjs";

const T = { timeout: 20000 };
let plain;
let app;
const clients = [];

function client(url, options = {}) {
  const c = new RoomdClient(url, { backoff: { base: 0.05, maxDelay: 0.2 }, ...options });
  clients.push(c);
  return c;
}

before(async () => {
  [plain, app] = await startNodes(NodeProcess.roomd("jsA"), NodeProcess.app());
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await stopAll();
});

describe("calls and pushes", T, () => {
  test("welcome, join, members, text message pushed with seq, from and room", T, async () => {
    const alice = client(plain.url, { user: "alice" });
    const bob = client(plain.url, { user: "bob" });
    const opened = await alice.connect();
    assert.equal(opened.user, "alice");
    assert.equal(opened.node, "jsA");
    assert.equal(opened.reconnect, false);
    assert.equal(alice.state, "open");
    assert.equal(alice.welcome.v, 1);
    await bob.connect();
    assert.deepEqual((await alice.join("lobby")).members, ["alice"]);
    assert.deepEqual((await bob.join("lobby")).members, ["alice", "bob"]);
    assert.deepEqual(alice.rooms, [{ ns: "/", room: "lobby" }]);
    const members = await alice.members("lobby");
    assert.deepEqual(
      members.map((m) => m.user),
      ["alice", "bob"],
    );
    const online = await alice.onlineUsers();
    assert.ok(online.includes("alice") && online.includes("bob"));

    const got = next(bob, "message");
    const all = record(bob, "*");
    const { messageId } = await alice.sendText("hello", { room: "lobby" });
    const push = await got;
    assert.equal(push.event, "message");
    assert.equal(push.from, "alice");
    assert.deepEqual(push.room, { ns: "/", room: "lobby" });
    assert.equal(push.data.messageId, messageId);
    assert.equal(push.data.payload.content, "hello");
    assert.ok(Number.isInteger(push.seq) && push.seq >= 1);
    assert.equal(bob.lastSeq, push.seq);
    assert.equal(all.at(-1), push);
  });

  test("direct messages reach the user and the sender's other connections", T, async () => {
    const carol = client(plain.url, { user: "carol" });
    const dave = client(plain.url, { user: "dave" });
    const carol2 = client(plain.url, { user: "carol" });
    await Promise.all([carol.connect(), dave.connect(), carol2.connect()]);
    const atDave = next(dave, "message");
    const copy = next(carol2, "message");
    await carol.send(
      { user: "dave" },
      { type: "image", payload: { url: "https://x.test/a.png", width: 8, height: 6 } },
    );
    for (const push of await Promise.all([atDave, copy])) {
      assert.equal(push.from, "carol");
      assert.deepEqual(push.to, ["dave"]);
      assert.equal(push.data.type, "image");
    }
  });

  test("the node's errors are AckError with its code and message", T, async () => {
    const erin = client(plain.url, { user: "erin" });
    await erin.connect();
    const notIn = await rejection(erin.leave("nowhere"));
    assert.ok(notIn instanceof AckError);
    assert.equal(notIn.code, "not_in_room");
    const unknown = await rejection(erin.call("no.such.event", {}));
    assert.equal(unknown.code, "unknown_event");
    await erin.join("pics");
    const invalid = await rejection(
      erin.send(
        { room: "pics" },
        { type: "image", payload: { url: "https://x.test/a.png", width: 0, height: 6 } },
      ),
    );
    assert.equal(invalid.code, "invalid");
    assert.match(invalid.message, /payload\.width/);
  });

  test("an emit the node refuses is reported as an error event", T, async () => {
    const frank = client(plain.url, { user: "frank" });
    await frank.connect();
    const problem = next(frank, Lifecycle.ERROR);
    await frank.emit("room.leave", { room: "nowhere" });
    assert.equal((await problem).code, "not_in_room");
  });

  test("callback form and timeouts", T, async () => {
    const gina = client(app.url, { user: "gina" });
    await gina.connect();
    const result = await new Promise((resolve, reject) => {
      const returned = gina.call("echo", { n: 1 }, (error, value) =>
        error ? reject(error) : resolve(value),
      );
      assert.equal(returned, undefined);
    });
    assert.deepEqual(result, { n: 1 });
    const error = await new Promise((resolve) =>
      gina.call("sleep", 2, { timeout: 0.2 }, (e) => resolve(e)),
    );
    assert.ok(error instanceof RequestTimeout);
    assert.equal(error.code, "timeout");
    assert.match(error.message, /within 0\.2 s/);
    await assert.rejects(gina.call("echo", 1, { timeout: -1 }), RangeError);
  });
});

describe("the node's requests", T, () => {
  test(
    "a handler's value answers, HandlerError answers an error, no handler is unknown_event",
    T,
    async () => {
      const hal = client(app.url, { user: "hal" });
      await hal.connect();
      hal.onRequest("confirm", async (data) => ({ ok: data.question === "sure?" }));
      hal.onRequest("refuse", () => {
        throw new HandlerError("declined", "the user said no");
      });
      assert.deepEqual(await hal.call("ask", { event: "confirm", data: { question: "sure?" } }), {
        answer: { ok: true },
      });
      assert.deepEqual(await hal.call("ask", { event: "refuse" }), {
        error: "declined",
        message: "the user said no",
      });
      assert.equal((await hal.call("ask", { event: "nobody" })).error, "unknown_event");
      hal.onRequest("confirm", null);
      assert.equal((await hal.call("ask", { event: "confirm" })).error, "unknown_event");
    },
  );

  test("a handler slower than the request's timeout is not answered", T, async () => {
    const ian = client(app.url, { user: "ian" });
    await ian.connect();
    ian.onRequest("slow", () => new Promise((resolve) => setTimeout(() => resolve("late"), 1000)));
    assert.deepEqual(await ian.call("ask", { event: "slow", timeout: 0.2 }), { error: "timeout" });
  });

  test("room sends with ack reach members as requests", T, async () => {
    const jo = client(plain.url, { user: "jo" });
    const kim = client(plain.url, { user: "kim" });
    await Promise.all([jo.connect(), kim.connect()]);
    await jo.join("poll");
    await kim.join("poll");
    kim.onRequest("vote", (data, request) => ({ vote: data, from: request.from }));
    jo.onRequest("vote", () => "mine");
    const result = await jo.call("send", {
      to: { room: "poll" },
      event: "vote",
      data: 7,
      ack: true,
    });
    assert.equal(result.acked, 2);
    assert.equal(result.errors, 0);
  });
});

describe("heartbeat and closing", T, () => {
  test("pings measure the round trip", T, async () => {
    const lee = client(plain.url, { user: "lee", heartbeatInterval: 0.1 });
    await lee.connect();
    const pongs = [await next(lee, Lifecycle.PONG), await next(lee, Lifecycle.PONG)];
    for (const pong of pongs) {
      assert.ok(pong.rtt >= 0 && pong.rtt < 1);
      assert.ok(pong.serverTs > 1.7e9);
    }
    assert.equal(lee.rtt.samples >= 2, true);
    assert.equal(lee.rtt.latest, pongs[1].rtt);
  });

  test("close() closes with 1000; then everything is refused with ClientClosed", T, async () => {
    const max = client(plain.url, { user: "max" });
    await max.connect();
    const closed = next(max, Lifecycle.CLOSE);
    await within(max.close(), 5, "close");
    assert.equal(max.state, "closed");
    assert.deepEqual(await closed, {
      code: 1000,
      reason: "closed by client",
      reconnect: false,
      local: false,
    });
    const error = await rejection(max.emit("typing", { room: "x" }));
    assert.ok(error instanceof ClientClosed);
    assert.equal(error.closeCode, 1000);
    assert.ok((await rejection(max.call("users.online"))) instanceof ClientClosed);
    await assert.rejects(max.connect(), ClientClosed);
  });

  test("fetchHealth checks a node", T, async () => {
    const health = await fetchHealth(plain.url);
    assert.equal(health.name, "jsA");
    assert.equal(health.protocol, 1);
    assert.equal(health.status, "ok");
  });
});

describe("history and the online list", T, () => {
  test("room history: the last messages, or those after a position", T, async () => {
    const hana = client(plain.url, { user: "hana" });
    const ivan = client(plain.url, { user: "ivan" });
    await Promise.all([hana.connect(), ivan.connect()]);
    await hana.join("archive");
    for (const word of ["one", "two", "three"]) await hana.sendText(word, { room: "archive" });
    const joined = await ivan.join("archive"); // reading starts at the room's position now
    assert.equal(joined.offset, 3);
    const last = await ivan.history("archive", { limit: 2 });
    assert.deepEqual(
      last.messages.map((m) => [m.offset, m.data.payload.content]),
      [
        [2, "two"],
        [3, "three"],
      ],
    );
    assert.deepEqual([last.epoch, last.offset], [joined.epoch, 3]);
    const since = await ivan.history("archive", { since: { epoch: joined.epoch, offset: 1 } });
    assert.deepEqual(
      since.messages.map((m) => m.data.payload.content),
      ["two", "three"],
    );
    const stranger = client(plain.url, { user: "jon" });
    await stranger.connect();
    const refused = await rejection(stranger.history("archive"));
    assert.ok(refused instanceof AckError);
    assert.equal(refused.code, "not_in_room");
  });

  test("users.subscribe: the whole sorted list pushed on every change", T, async () => {
    const kim = client(plain.url, { user: "kim" });
    await kim.connect();
    const before = await kim.subscribeUsers();
    assert.ok(before.includes("kim") && !before.includes("lea"));
    const joined = next(kim, "users.online", (push) => push.data.users.includes("lea"));
    const lea = client(plain.url, { user: "lea" });
    await lea.connect();
    const { data } = await joined;
    assert.deepEqual(data.users, [...new Set(data.users)].sort());
    const left = next(kim, "users.online", (push) => !push.data.users.includes("lea"));
    await lea.close();
    await left;
    await kim.unsubscribeUsers();
  });
});
