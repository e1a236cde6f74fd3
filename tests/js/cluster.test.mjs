// Sessions across the nodes of a real cluster (a broker and two node processes): a draining node
// sends its clients elsewhere with a reconnect frame, a killed node's sessions resume on the other
// node; either way every message arrives once and in order.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Lifecycle, RoomdClient, httpUrl } from "../../roomd/web/roomd.js";
import { next, record, startCluster, stopAll, within } from "./support.mjs";

const T = { timeout: 40000 };
const clients = [];
let a;
let b;

function client(urls, options = {}) {
  const c = new RoomdClient(urls, { backoff: { base: 0.05, maxDelay: 0.2 }, ...options });
  clients.push(c);
  return c;
}

const text = (content) => ({ type: "text", payload: { content } });
const contents = (pushes) => pushes.map((push) => push.data.payload.content);
const room = (words) => words.filter((word) => !word.startsWith("dm"));
const dms = (words) => words.filter((word) => word.startsWith("dm"));

/** `count` messages to the room `r` and every fifth one to `dm` too, a few ms apart. */
async function chatter(sender, count, dm) {
  const sent = [];
  for (let i = 0; i < count; i += 1) {
    await sender.send({ room: "r" }, text(`r${i}`));
    sent.push(`r${i}`);
    if (i % 5 === 0) {
      await sender.send({ user: dm }, text(`dm${i}`));
      sent.push(`dm${i}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return sent;
}

before(async () => {
  ({
    nodes: [a, b],
  } = await startCluster(
    ["jsA", "jsB"],
    ["[shutdown]", "drain_period = 0.2", "move_timeout = 3.0", "drain_timeout = 10.0"],
  ));
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await stopAll();
});

describe("across a cluster", T, () => {
  test("a draining node's client follows its reconnect frame and resumes there", T, async () => {
    const bob = client(b.url, { user: "bob" });
    const alice = client(a.url, { user: "alice" }); // knows node A only: B comes in the frame
    await Promise.all([alice.connect(), bob.connect()]);
    await alice.join("r");
    await bob.join("r");
    const got = record(alice, "message");
    const moved = next(alice, Lifecycle.OPEN);
    const sending = chatter(bob, 25, "alice");
    const drain = await fetch(httpUrl(a.url, "/drain"), { method: "POST" });
    assert.equal(drain.status, 202);
    const opened = await moved;
    assert.deepEqual(
      [opened.node, opened.resumed, opened.url, opened.gaps, opened.inboxGap],
      ["jsB", true, b.url, [], false],
    );
    const sent = await sending;
    const end = next(alice, "message", (push) => push.data.payload.content === "end");
    await bob.send({ room: "r" }, text("end"));
    await end;
    // Once each, in each stream's order (a replay sends the room's, then the inbox's).
    assert.deepEqual(room(contents(got)), [...room(sent), "end"]);
    assert.deepEqual(dms(contents(got)), dms(sent));
    assert.equal(await within(a.exited, 10, "node A stops once drained"), 0);
  });

  test("a killed node's sessions resume on the other node", T, async () => {
    const from = b.output.length;
    await a.start(); // drained and stopped by the test above: back in the cluster
    await b.waitFor(/node jsA is up/, { from });
    // cara's inbox is numbered by node A (rendezvous over jsA, jsB), which survives. (An inbox
    // whose only copy died with its node comes back as a gap: the open event's inboxGap.)
    const cara = client([b.url, a.url], { user: "cara", preferLeastLoaded: false });
    const dave = client(a.url, { user: "dave" });
    await Promise.all([cara.connect(), dave.connect()]);
    await cara.join("r");
    await dave.join("r");
    const got = record(cara, "message");
    const moved = next(cara, Lifecycle.OPEN);
    const seen = next(cara, "message");
    await dave.send({ room: "r" }, text("before"));
    await seen; // nothing in flight: what follows is numbered once node B is known down
    await b.kill();
    const sent = ["before", ...(await chatter(dave, 25, "cara"))];
    const opened = await moved;
    assert.deepEqual(
      [opened.node, opened.resumed, opened.gaps, opened.inboxGap],
      ["jsA", true, [], false],
    );
    const end = next(cara, "message", (push) => push.data.payload.content === "end");
    await dave.send({ room: "r" }, text("end"));
    await end;
    assert.deepEqual(room(contents(got)), [...room(sent), "end"]);
    assert.deepEqual(dms(contents(got)), dms(sent));
  });
});
