// Several node URLs: the least loaded healthy node first, the next one when a node fails.

import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, describe, test } from "node:test";

import {
  InvalidServer,
  Lifecycle,
  RoomdClient,
  fetchHealth,
  parseHealth,
} from "../../roomd/web/roomd.js";
import { NodeProcess, next, rejection, startNodes, stopAll } from "./support.mjs";

const T = { timeout: 30000 };
let a;
let b;
const clients = [];

function client(urls, options = {}) {
  const c = new RoomdClient(urls, { backoff: { base: 0.02, maxDelay: 0.1 }, ...options });
  clients.push(c);
  return c;
}

before(async () => {
  [a, b] = await startNodes(NodeProcess.roomd("jsA"), NodeProcess.roomd("jsB"));
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await stopAll();
});

describe("failover", T, () => {
  test(
    "the least loaded node first; when it dies, the other, with the rooms re-joined",
    T,
    async () => {
      const load = ["u1", "u2", "u3"].map((user) => client(a.url, { user }));
      await Promise.all(load.map((c) => c.connect()));
      // Two separate nodes (no cluster): a new session there, rooms re-joined (resume across a
      // cluster's nodes is in cluster.test.mjs).
      const alice = client([a.url, b.url], { user: "alice", resume: false });
      const first = await alice.connect();
      assert.equal(first.node, "jsB");
      assert.equal(alice.url, b.url);
      await alice.join("lobby");
      const moved = next(alice, Lifecycle.OPEN);
      await b.kill();
      const opened = await moved;
      assert.equal(opened.node, "jsA");
      assert.equal(opened.url, a.url);
      assert.deepEqual(opened.rejoined, [{ ns: "/", room: "lobby" }]);
      assert.deepEqual(
        (await alice.members("lobby")).map((m) => m.user),
        ["alice"],
      );
      await b.start();
    },
  );

  test("without /health, the URLs are tried in turn", T, async () => {
    const noFetch = () => Promise.reject(new TypeError("blocked"));
    const dead = "ws://127.0.0.1:1/ws";
    const bob = client([dead, a.url], { user: "bob", fetch: noFetch });
    const closed = next(bob, Lifecycle.CLOSE);
    const opened = await bob.connect();
    assert.equal((await closed).code, 1006);
    assert.equal(opened.url, a.url);
  });

  test("a draining or unreachable node is not chosen", T, async () => {
    const draining = async (url) => {
      const body = {
        name: "x",
        status: url.includes(`:${a.port}/`) ? "draining" : "ok",
        version: "0",
        protocol: 1,
        uptime: 1,
        connections: url.includes(`:${a.port}/`) ? 0 : 50,
        users: 0,
        rooms: 0,
      };
      return { status: 200, text: async () => JSON.stringify(body) };
    };
    const carol = client([a.url, b.url], { user: "carol", fetch: draining });
    assert.equal((await carol.connect()).url, b.url);
  });
});

describe("fetchHealth", T, () => {
  let web;
  let base;

  before(async () => {
    web = createServer((request, response) => {
      const answers = {
        "/health": [200, "<html>not json</html>"],
      };
      const [status, body] = answers[request.url] ?? [404, "no"];
      response.writeHead(status, { "content-type": "text/html" }).end(body);
    });
    await new Promise((resolve) => web.listen(0, "127.0.0.1", resolve));
    base = `http://127.0.0.1:${web.address().port}`;
  });

  after(() => new Promise((resolve) => web.close(resolve)));

  test("says why a URL is not a usable roomd node", T, async () => {
    const notJson = await rejection(fetchHealth(base));
    assert.ok(notJson instanceof InvalidServer);
    assert.equal(notJson.problem, "GET /health did not answer JSON: not a roomd node");
    const unreachable = await rejection(fetchHealth("ws://127.0.0.1:1"));
    assert.match(unreachable.problem, /^cannot reach its \/health/);
    assert.throws(() => parseHealth("u", 404, ""), /answered HTTP 404/);
    assert.throws(() => parseHealth("u", 200, '{"name": 1}'), /lacks roomd fields \(name, status/);
    const newer = {
      name: "n",
      status: "ok",
      version: "9",
      protocol: 2,
      uptime: 0,
      connections: 0,
      users: 0,
      rooms: 0,
    };
    assert.throws(
      () => parseHealth("u", 200, JSON.stringify(newer)),
      /speaks protocol version 2; this client speaks 1/,
    );
    assert.match((await rejection(fetchHealth("ftp://x"))).problem, /not a roomd URL/);
    assert.equal((await fetchHealth(a.url)).name, "jsA");
  });
});
