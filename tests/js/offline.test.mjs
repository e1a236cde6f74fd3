// The offline queue: bounded, flushed in order on reconnect at the node's announced pace, calls
// that time out in it are never sent, queued emits the node refuses are reported.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  Lifecycle,
  OfflineQueueFull,
  Pacer,
  RequestTimeout,
  RoomdClient,
} from "../../roomd/web/roomd.js";
import {
  NodeProcess,
  configFile,
  gatedSocket,
  next,
  record,
  rejection,
  startNodes,
  stopAll,
} from "./support.mjs";

const T = { timeout: 30000 };
const RATE = 20; // the node's limits in these tests: 20 frames/s, bursts of 10
const BURST = 10;
let node;
const clients = [];

const GatedSocket = gatedSocket();

function client(url, options = {}) {
  const c = new RoomdClient(url, { backoff: { base: 0.02, maxDelay: 0.1 }, ...options });
  clients.push(c);
  return c;
}

before(async () => {
  const config = configFile(["[limits]", `rate = ${RATE}`, `burst = ${BURST}`]);
  [node] = await startNodes(NodeProcess.app({ config }));
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await stopAll();
});

describe("pacing (pure)", () => {
  test("a bucket of 90% of the announced rate and burst", () => {
    const pacer = Pacer.fromLimits({ rate: 50, burst: 100 }, 0, 1);
    assert.equal(pacer.rate, 45);
    assert.equal(pacer.burst, 90);
    for (let i = 0; i < 88; i += 1) pacer.take(0); // the hello took one
    assert.equal(pacer.wait(0), 0);
    pacer.take(0);
    assert.ok(Math.abs(pacer.wait(0) - 1 / 45) < 1e-9);
    assert.equal(pacer.wait(1 / 45), 0);
    assert.equal(Pacer.fromLimits({ rate: 0, burst: 1 }, 0), null);
  });
});

describe("offline queue", T, () => {
  test(
    "emits made offline are flushed in order, after the re-joins, within the rate",
    T,
    async () => {
      // A new session on reconnect (a resumed one keeps its rooms: nothing to re-join).
      const alice = client(node.url, { user: "alice", WebSocket: GatedSocket, resume: false });
      const bob = client(node.url, { user: "bob" });
      await Promise.all([alice.connect(), bob.connect()]);
      await alice.join("q");
      await bob.join("q");
      const problems = record(alice, Lifecycle.ERROR);
      const down = next(alice, Lifecycle.CLOSE);
      GatedSocket.cut(); // alice alone goes offline; bob stays in the room
      assert.equal((await down).code, 4000);
      const count = 3 * BURST;
      const sent = [];
      for (let i = 0; i < count; i += 1) {
        sent.push(
          alice.emit("send", {
            to: { room: "q" },
            data: { type: "text", payload: { content: `m${i}` } },
          }),
        );
      }
      await Promise.all(sent); // queued: each emit resolves at once
      assert.equal(alice.queued, count);
      const received = [];
      const all = new Promise((resolve) => {
        bob.on("message", (push) => {
          received.push(push.data.payload.content);
          if (received.length === count) resolve();
        });
      });
      const reopened = next(alice, Lifecycle.OPEN);
      const started = performance.now();
      GatedSocket.down = false;
      const opened = await reopened;
      assert.deepEqual(opened.rejoined, [{ ns: "/", room: "q" }]);
      assert.equal(opened.flushed, count);
      assert.equal(alice.queued, 0);
      await all;
      const seconds = (performance.now() - started) / 1000;
      assert.deepEqual(
        received,
        Array.from({ length: count }, (_, i) => `m${i}`),
      );
      assert.deepEqual(problems, []); // no rate_limited refusal
      // hello, the re-join and `count` events through a bucket of 0.9 * BURST at 0.9 * RATE/s
      const least = (count + 2 - 0.9 * BURST) / (0.9 * RATE);
      assert.ok(seconds >= least - 0.1, `flushed in ${seconds} s, at least ${least} s expected`);
    },
  );

  test("a full queue refuses at once and keeps what it holds", T, async () => {
    const carol = client(node.url, { user: "carol", offlineQueue: 2 });
    await carol.emit("echo", 1); // before connect(): queued
    await carol.emit("echo", 2);
    const full = await rejection(carol.emit("echo", 3));
    assert.ok(full instanceof OfflineQueueFull);
    assert.equal(full.size, 2);
    assert.equal(carol.queued, 2);
    const opened = await carol.connect();
    assert.equal(opened.flushed, 2);
  });

  test("a queued call: onPending, then its timeout removes it unsent", T, async () => {
    const dave = client(node.url, { user: "dave" });
    let pending = null;
    const error = await rejection(
      dave.call("echo", 1, { timeout: 0.1, onPending: (info) => (pending = info) }),
    );
    assert.ok(error instanceof RequestTimeout);
    assert.equal(pending.event, "echo");
    assert.equal(pending.queued, 1);
    assert.equal(dave.queued, 0);
    assert.equal((await dave.connect()).flushed, 0);
    assert.equal(await dave.call("echo", "after"), "after");
  });

  test("a queued emit the node refuses is reported with its cmid", T, async () => {
    const erin = client(node.url, { user: "erin" });
    await erin.emit("room.leave", { room: "never-joined" });
    const failed = next(erin, Lifecycle.EMIT_FAILED);
    await erin.connect();
    const report = await failed;
    assert.equal(report.event, "room.leave");
    assert.equal(report.code, "not_in_room");
    assert.match(report.cmid, /^[0-9a-z]+-\d+$/);
  });
});
