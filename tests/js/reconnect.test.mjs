// Reconnect: backoff with full jitter, the repeat limit, terminal close codes, re-joined rooms.

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { after, describe, test } from "node:test";

import {
  Backoff,
  CLOSE_CODES,
  ClientClosed,
  ConnectFailed,
  Lifecycle,
  RoomdClient,
  decide,
  shouldReconnect,
} from "../../roomd/web/roomd.js";
import {
  NodeProcess,
  configFile,
  next,
  record,
  rejection,
  startNodes,
  stopAll,
  within,
} from "./support.mjs";

const T = { timeout: 30000 };
const clients = [];

function client(url, options = {}) {
  const c = new RoomdClient(url, { backoff: { base: 0.05, maxDelay: 0.2 }, ...options });
  clients.push(c);
  return c;
}

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await stopAll();
});

/** A WebSocket whose hello is rewritten by `change(frame)` (to provoke the node). */
function rewritingHello(change) {
  return class extends WebSocket {
    send(text) {
      const frame = JSON.parse(text);
      super.send(JSON.stringify(frame.type === "hello" ? change(frame) : frame));
    }
  };
}

describe("the decision (pure)", () => {
  test("full jitter under an exponential ceiling, and the repeat limit", () => {
    const backoff = new Backoff({ base: 0.5, maxDelay: 4, attempts: 3 });
    assert.deepEqual(
      [1, 2, 3, 4, 5].map((n) => backoff.ceiling(n)),
      [0.5, 1, 2, 4, 4],
    );
    assert.deepEqual(
      decide(1006, 2, backoff, () => 0.5),
      { reconnect: true, attempt: 2, delay: 0.5 },
    );
    assert.equal(decide(1006, 1, backoff, () => 0).delay, 0);
    assert.deepEqual(
      decide(1006, 4, backoff, () => 0.5),
      {
        reconnect: false,
        gaveUp: true,
        reason: "gave up after 3 reconnect attempts",
      },
    );
    assert.deepEqual(
      decide(4010, 1, backoff, () => 0.5),
      {
        reconnect: false,
        gaveUp: false,
        reason: "terminal close code 4010",
      },
    );
    assert.throws(() => new Backoff({ base: 0 }), RangeError);
    assert.throws(() => new Backoff({ attempts: 1.5 }), RangeError);
  });

  test("terminal codes never reconnect; unknown ones do, except 4500-4999", () => {
    for (const [code, row] of Object.entries(CLOSE_CODES))
      assert.equal(shouldReconnect(Number(code)), row.reconnect);
    assert.equal(shouldReconnect(null), true);
    assert.equal(shouldReconnect(1005), true);
    assert.equal(shouldReconnect(4499), true);
    assert.equal(shouldReconnect(4500), false);
    assert.equal(shouldReconnect(4999), false);
    assert.equal(shouldReconnect(3000), true);
  });
});

describe("reconnecting", T, () => {
  test(
    "a killed node: 1006, backoff attempts, then the rooms are re-joined on the new session",
    T,
    async () => {
      const [node] = await startNodes(NodeProcess.roomd("jsR"));
      const alice = client(node.url, { user: "alice", random: () => 0.5 });
      const first = await alice.connect();
      await alice.join("lobby");
      await alice.join("kitchen", "/home");
      const closes = record(alice, Lifecycle.CLOSE);
      const attempts = record(alice, Lifecycle.RECONNECTING);
      const third = next(alice, Lifecycle.RECONNECTING, (r) => r.attempt === 3);
      await node.kill();
      await third; // the node is still down: attempts 1, 2, 3 failed or wait
      assert.deepEqual(closes[0], {
        code: 1006,
        reason: "connection lost",
        reconnect: true,
        local: true,
      });
      assert.deepEqual(
        attempts.slice(0, 3).map((r) => [r.attempt, r.delay]),
        [
          [1, 0.025],
          [2, 0.05],
          [3, 0.1],
        ],
      );
      assert.equal(alice.state, "reconnecting");
      const reopened = next(alice, Lifecycle.OPEN);
      await node.start();
      const opened = await reopened;
      assert.equal(opened.reconnect, true);
      assert.notEqual(opened.session, first.session);
      assert.equal(opened.resumed, false);
      assert.equal(opened.reason, "unknown_session"); // the restarted node does not know it
      assert.deepEqual(opened.rejoined, [
        { ns: "/", room: "lobby" },
        { ns: "/home", room: "kitchen" },
      ]);
      assert.deepEqual(
        (await alice.members("kitchen", "/home")).map((m) => m.user),
        ["alice"],
      );
      assert.equal(alice.reconnects, 1);
      await node.kill();
    },
  );

  test("a node shutting down closes with 1001: the client reconnects", T, async () => {
    const [node] = await startNodes(NodeProcess.roomd("jsS"));
    const bob = client(node.url, { user: "bob" });
    await bob.connect();
    const closed = next(bob, Lifecycle.CLOSE);
    await node.stop();
    assert.deepEqual(await closed, {
      code: 1001,
      reason: "going away",
      reconnect: true,
      local: false,
    });
    const reopened = next(bob, Lifecycle.OPEN);
    await node.start();
    assert.equal((await reopened).reconnect, true);
    await node.kill();
  });

  test("the repeat limit: repeat-limit event, then closed", T, async () => {
    const [node] = await startNodes(NodeProcess.roomd("jsL"));
    const carol = client(node.url, {
      user: "carol",
      backoff: { base: 0.01, maxDelay: 0.02, attempts: 3 },
    });
    await carol.connect();
    const limit = next(carol, Lifecycle.REPEAT_LIMIT);
    const closed = next(carol, Lifecycle.CLOSE);
    await node.kill();
    await closed;
    const queued = rejection(carol.call("users.online", {}, { timeout: 10 }));
    assert.deepEqual(await limit, { attempts: 3, code: 1006, reason: "cannot connect" });
    assert.equal(carol.state, "closed");
    const error = await queued;
    assert.ok(error instanceof ClientClosed);
    assert.equal(error.closeCode, 1006);
  });

  test("a first connection that never opens rejects connect() with ConnectFailed", T, async () => {
    const [node] = await startNodes(NodeProcess.roomd("jsD"));
    const port = node.port;
    await node.kill();
    const dave = client(`ws://127.0.0.1:${port}`, {
      user: "dave",
      backoff: { base: 0.01, maxDelay: 0.01, attempts: 2 },
    });
    const error = await within(rejection(dave.connect()), 10, "connect fails");
    assert.ok(error instanceof ConnectFailed);
    assert.equal(error.closeCode, 1006);
    assert.match(error.message, /gave up after 2 reconnect attempts: 1006 cannot connect/);
  });
});

describe("terminal close codes", T, () => {
  let app;

  test("kicked (4010): closed for good, no reconnect attempt", T, async () => {
    [app] = await startNodes(NodeProcess.app());
    const erin = client(app.url, { user: "erin" });
    await erin.connect();
    const attempts = record(erin, Lifecycle.RECONNECTING);
    const closed = next(erin, Lifecycle.CLOSE);
    erin.emit("kick-me", "bye now");
    assert.deepEqual(await closed, {
      code: 4010,
      reason: "bye now",
      reconnect: false,
      local: false,
    });
    assert.equal(erin.state, "closed");
    assert.equal(erin.closeCode, 4010);
    assert.deepEqual(attempts, []);
    const error = await rejection(erin.emit("typing", { room: "x" }));
    assert.equal(error.closeCode, 4010);
  });

  test("unsupported version (4002): the node's error, then ConnectFailed", T, async () => {
    const frank = client(app.url, {
      user: "frank",
      WebSocket: rewritingHello((hello) => ({ ...hello, v: 2 })),
    });
    const problem = next(frank, Lifecycle.ERROR);
    const error = await within(rejection(frank.connect()), 10, "connect fails");
    assert.ok(error instanceof ConnectFailed);
    assert.equal(error.closeCode, 4002);
    assert.equal((await problem).code, "unsupported_version");
    assert.equal(frank.state, "closed");
  });

  test("bad handshake (4003): terminal", T, async () => {
    const event = () => ({ type: "event", id: 1, event: "users.online" });
    const gina = client(app.url, { user: "gina", WebSocket: rewritingHello(event) });
    const error = await within(rejection(gina.connect()), 10, "connect fails");
    assert.equal(error.closeCode, 4003);
  });
});

describe("tokens", T, () => {
  const secret = "a-secret-for-the-js-tests-0123456789";

  /** An HS256 JWT for `sub`, as `roomd token` mints them. */
  function mint(sub, ttl = 3600) {
    const part = (object) => Buffer.from(JSON.stringify(object)).toString("base64url");
    const signed = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, exp: Date.now() / 1000 + ttl })}`;
    return `${signed}.${createHmac("sha256", secret).update(signed).digest("base64url")}`;
  }

  test("a token function is called for every connection attempt (?token=)", T, async () => {
    const [node] = await startNodes(
      NodeProcess.app({ config: configFile(["[auth]", `secret = "${secret}"`]) }),
    );
    let minted = 0;
    const tina = client(node.url, {
      token: async () => {
        minted += 1;
        return mint("tina");
      },
    });
    assert.equal((await tina.connect()).user, "tina");
    const reopened = next(tina, Lifecycle.OPEN);
    const attempts = record(tina, Lifecycle.RECONNECTING);
    await node.stop();
    await node.start();
    assert.equal((await reopened).user, "tina");
    assert.equal(minted, 1 + attempts.length); // one token per connection attempt
    // A refused upgrade (HTTP 401) shows as a lost connection in a WebSocket API: bounded here.
    const ursula = client(node.url, { token: "not-a-jwt", backoff: { base: 0.01, attempts: 1 } });
    const error = await within(rejection(ursula.connect()), 10, "connect fails");
    assert.ok(error instanceof ConnectFailed);
    assert.equal(error.closeCode, 1006);
    await node.kill();
  });
});
