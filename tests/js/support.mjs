// Real roomd nodes as child processes for the tests of roomd.js, and small async helpers.
// Run by tests/test_web_js.py: ROOMD_PYTHON is the Python that has roomd installed.

import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const PYTHON = process.env.ROOMD_PYTHON ?? "python3";
const REPO = fileURLToPath(new URL("../../", import.meta.url));
const START_TIMEOUT = 15; // seconds for a node to listen
const running = new Set();

/** A roomd node process; `port` is known once it listens (port 0 picks a free one). */
export class NodeProcess {
  constructor(argv, name) {
    this.argv = argv;
    this.name = name;
    this.port = null;
    this.process = null;
    this.output = [];
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

  get url() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Start (again, on the same port once it has one); resolves when it listens. */
  async start() {
    const child = spawn(PYTHON, [...this.argv, "--port", String(this.port ?? 0)], {
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
          this.output.push(line);
          const match = /listening on [^ ]+:(\d+)/.exec(line);
          if (match) resolve(Number(match[1]));
        }
      };
      child.stdout.setEncoding("utf8").on("data", onData);
      child.stderr.setEncoding("utf8").on("data", onData);
      exited.then((code) =>
        reject(new Error(`${this.name} exited (${code}):\n${this.output.join("\n")}`)),
      );
    });
    this.port = await within(listening, START_TIMEOUT, `${this.name} listening`);
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
