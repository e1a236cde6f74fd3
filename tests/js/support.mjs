// Real roomd nodes as child processes for the tests of roomd.js, and small async helpers.
// Run by tests/test_web_js.py: ROOMD_PYTHON is the Python that has roomd installed.

import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const PYTHON = process.env.ROOMD_PYTHON ?? "python3";
const REPO = fileURLToPath(new URL("../../", import.meta.url));
const START_TIMEOUT = 15; // seconds for a node to listen
const running = new Set();

/**
 * A roomd node process; `port` is known once it listens (port 0 picks a free one). Another
 * process (the broker) is ready at the first line matching `ready` and gets no `--port`.
 */
export class NodeProcess {
  constructor(argv, name, ready = null) {
    this.argv = argv;
    this.name = name;
    this.ready = ready;
    this.port = null;
    this.process = null;
    this.output = [];
    this._waiters = new Set(); // {regex, from, resolve}: waitFor's
  }

  /** `roomd --dev` (the command users run). */
  static roomd(name, { config = null } = {}) {
    const argv = ["-m", "roomd.cli", "--name", name, "--dev", "--log-level", "INFO"];
    if (config !== null) argv.push("--config", config);
    return new NodeProcess(argv, name);
  }

  /** A node with application events (tests/js/app_node.py). */
  static app({ config = null } = {}) {
    const argv = [join(REPO, "tests/js/app_node.py")];
    if (config !== null) argv.push("--config", config);
    return new NodeProcess(argv, "app");
  }

  /** The first output line from index `from` on that matches `regex` (within `seconds`). */
  waitFor(regex, { from = 0, seconds = 15 } = {}) {
    const found = this.output.slice(from).find((line) => regex.test(line));
    if (found !== undefined) return Promise.resolve(found);
    let waiter;
    const match = new Promise((resolve) => {
      waiter = { regex, resolve };
      this._waiters.add(waiter);
    });
    return within(match, seconds, `${this.name}: a line matching ${regex}`).finally(() =>
      this._waiters.delete(waiter),
    );
  }

  _line(line) {
    this.output.push(line);
    for (const waiter of this._waiters) if (waiter.regex.test(line)) waiter.resolve(line);
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Start (again, on the same port once it has one); resolves when it listens. */
  async start() {
    const argv = this.ready === null ? [...this.argv, "--port", String(this.port ?? 0)] : this.argv;
    const ready = this.ready ?? /listening on [^ ]+:(\d+)/;
    const child = spawn(PYTHON, argv, {
      cwd: REPO,
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.process = child;
    running.add(this);
    const exited = new Promise((resolve) => child.once("exit", resolve));
    this.exited = exited;
    const listening = new Promise((resolve, reject) => {
      let pending = "";
      const onData = (chunk) => {
        pending += chunk;
        const lines = pending.split("\n");
        pending = lines.pop();
        for (const line of lines) {
          this._line(line);
          const match = ready.exec(line);
          if (match) resolve(match[1] === undefined ? null : Number(match[1]));
        }
      };
      child.stdout.setEncoding("utf8").on("data", onData);
      child.stderr.setEncoding("utf8").on("data", onData);
      exited.then((code) =>
        reject(new Error(`${this.name} exited (${code}):\n${this.output.join("\n")}`)),
      );
    });
    const port = await within(listening, START_TIMEOUT, `${this.name} ready`);
    if (this.ready === null) this.port = port;
    return this;
  }

  /** SIGKILL: the node dies without closing anything (clients see 1006). */
  async kill() {
    return this._signal("SIGKILL");
  }

  /** SIGTERM: the node closes every connection with 1001 and exits. */
  async stop() {
    return this._signal("SIGTERM");
  }

  async _signal(signal) {
    const child = this.process;
    if (child === null || child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    await within(this.exited, 10, `${this.name} exit`);
    running.delete(this);
  }
}

/** Free TCP ports on 127.0.0.1 (for the bus endpoints of a cluster). */
export async function freePorts(count) {
  const servers = await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise((resolve) => {
          const server = createServer();
          server.listen(0, "127.0.0.1", () => resolve(server));
        }),
    ),
  );
  const ports = servers.map((server) => server.address().port);
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  return ports;
}

/**
 * A broker and `names.length` development nodes in one cluster (fast heartbeats: a killed node
 * is known to be down within a second; a CurveZMQ bus, keys made for the run). Resolves once
 * every node sees all the others.
 */
export async function startCluster(names, extra = []) {
  const [frontend, backend] = (await freePorts(2)).map((port) => `tcp://127.0.0.1:${port}`);
  const keys = join(mkdtempSync(join(tmpdir(), "roomd-js-keys-")), "keys");
  const made = spawnSync(PYTHON, ["-m", "roomd.cli", "keys", "broker", ...names, "--dir", keys], {
    cwd: REPO,
    encoding: "utf8",
  });
  if (made.status !== 0) throw new Error(`roomd keys failed:\n${made.stderr}`);
  const config = configFile([
    "[auth]",
    "dev = true",
    "[cluster]",
    'mode = "broker"',
    `broker_frontend = "${frontend}"`,
    `broker_backend = "${backend}"`,
    `keys = "${keys}"`,
    "heartbeat_interval = 0.2",
    "heartbeat_misses = 3",
    "snapshot_retry = 0.3",
    "call_timeout = 1.0",
    ...extra,
  ]);
  const brokerArgv = ["-m", "broker", "--frontend", frontend, "--backend", backend, "--keys", keys];
  const broker = new NodeProcess(
    [...brokerArgv, "--stats-interval", "0"],
    "broker",
    /^\{"frontend"/,
  );
  await broker.start();
  const nodes = names.map((name) => NodeProcess.roomd(name, { config }));
  await startNodes(...nodes);
  await Promise.all(
    nodes.flatMap((node) =>
      names
        .filter((n) => n !== node.name)
        .map((peer) => node.waitFor(new RegExp(`node ${peer} is up`))),
    ),
  );
  return { broker, nodes, config };
}

/** Start nodes; they are killed by `stopAll` (call it in `after`). */
export async function startNodes(...nodes) {
  await Promise.all(nodes.map((node) => node.start()));
  return nodes;
}

export async function stopAll() {
  await Promise.all([...running].map((node) => node.kill()));
}

/** A node configuration file with these TOML lines. */
export function configFile(lines) {
  const dir = mkdtempSync(join(tmpdir(), "roomd-js-"));
  const path = join(dir, "node.toml");
  writeFileSync(path, `${lines.join("\n")}\n`);
  return path;
}

/** `promise`, or a rejection naming `what` after `seconds`. */
export function within(promise, seconds, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out after ${seconds} s: ${what}`)),
      seconds * 1000,
    );
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** The next `event` of `client` for which `predicate(item)` holds (within `seconds`). */
export function next(client, event, predicate = () => true, seconds = 10) {
  let off;
  const found = new Promise((resolve) => {
    off = client.on(event, (item) => {
      if (predicate(item)) resolve(item);
    });
  });
  return within(found, seconds, `${event}`).finally(off);
}

/** Every `event` of `client` from now on, in a list. */
export function record(client, event) {
  const items = [];
  client.on(event, (item) => items.push(item));
  return items;
}

/** Expected rejection: resolves with the error, fails if `promise` resolves. */
export async function rejection(promise) {
  let value;
  try {
    value = await promise;
  } catch (error) {
    return error;
  }
  throw new Error(`expected a rejection, got ${JSON.stringify(value)}`);
}

/**
 * A WebSocket class the test controls: `cut()` closes the current socket from the client's
 * side (4000, as a client that gives up on a connection does: the session stays resumable),
 * `cutAfter(predicate)` does so right after sending the first frame for which `predicate(frame)`
 * holds, and while `down` no connection can be made (the constructor throws).
 */
export function gatedSocket() {
  return class GatedSocket extends WebSocket {
    static down = false;
    static last = null;
    static after = null;

    constructor(url, protocols) {
      if (GatedSocket.down) throw new Error("the test keeps this client offline");
      super(url, protocols);
      GatedSocket.last = this;
    }

    send(text) {
      super.send(text);
      const after = GatedSocket.after;
      if (after !== null && after(JSON.parse(text))) {
        GatedSocket.after = null;
        GatedSocket.cut();
      }
    }

    static cut() {
      GatedSocket.down = true;
      GatedSocket.last.close(4000, "cut by the test");
    }

    static cutAfter(predicate) {
      GatedSocket.after = predicate;
    }
  };
}
