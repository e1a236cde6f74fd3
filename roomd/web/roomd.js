// roomd.js: the roomd client for browsers and Node.js. One ES module, no dependencies.
//
// A RoomdClient keeps one logical session with a roomd node alive: it connects (to one of several
// node URLs, preferring the least loaded), says hello, and from the welcome on serves the
// connection: acks settle calls, pushes reach listeners, the node's requests are answered by
// registered handlers, pings measure the round trip. When the connection ends, the close code
// decides: a terminal code stops the client, any other reconnects after an exponential backoff
// with full jitter (bounded by a repeat limit), or at once to the node a draining node names in a
// reconnect frame. A reconnect offers to resume the session from the client's position in each
// stream it follows (its rooms, its inbox): resumed, the node keeps the rooms and replays what
// was missed, and the calls not acknowledged go again with their cmid; not resumed, the rooms are
// re-joined and those calls fail. Then the offline queue is sent in order, and only then is the
// client open again. Every frame it sends keeps below the rate limit the node announced.
//
// The wire protocol is docs/protocol.md; the Trio client (roomd/client/) is the reference
// behaviour, and docs/client.md describes both.

export const VERSION = "0.1.0";
export const PROTOCOL_VERSION = 1;
export const SUPPORTED_VERSIONS = Object.freeze([1]);
export const SUBPROTOCOL = "roomd.v1";
export const DEFAULT_NAMESPACE = "/";

// Close codes ----------------------------------------------------------------------------------
// The table of roomd/protocol/_close.py, row for row (tests/test_web_js.py keeps them equal).

const RECONNECT = true;
const TERMINAL = false;

function closeRow(name, reconnect, reason, meaning) {
  return Object.freeze({ name, reconnect, reason, meaning });
}

export const CLOSE_CODES = Object.freeze({
  1000: closeRow("NORMAL", TERMINAL, "normal closure", "The session ended normally."),
  1001: closeRow("GOING_AWAY", RECONNECT, "going away", "The node is shutting down or draining."),
  1002: closeRow("PROTOCOL_ERROR", TERMINAL, "protocol error", "Invalid WebSocket framing."),
  1006: closeRow("ABNORMAL", RECONNECT, "abnormal closure", "The connection dropped (not sent)."),
  1008: closeRow(
    "POLICY_VIOLATION",
    TERMINAL,
    "policy violation",
    "The client broke a node policy.",
  ),
  1009: closeRow(
    "MESSAGE_TOO_BIG",
    RECONNECT,
    "message too big",
    "A frame exceeded the size limit.",
  ),
  1011: closeRow(
    "INTERNAL_ERROR",
    RECONNECT,
    "internal error",
    "The node hit an unexpected error.",
  ),
  1013: closeRow("TRY_AGAIN_LATER", RECONNECT, "try again later", "The node is at its limit."),
  4000: closeRow("HANDSHAKE_TIMEOUT", RECONNECT, "handshake timeout", "No hello in time."),
  4001: closeRow(
    "CLOSED_BY_CLIENT",
    TERMINAL,
    "closed by client",
    "The client closed the session.",
  ),
  4002: closeRow(
    "UNSUPPORTED_VERSION",
    TERMINAL,
    "unsupported protocol version",
    "The client speaks a protocol version this node does not.",
  ),
  4003: closeRow("BAD_HANDSHAKE", TERMINAL, "bad handshake", "The first frame was not a hello."),
  4004: closeRow("HEARTBEAT_TIMEOUT", RECONNECT, "heartbeat timeout", "No traffic within timeout."),
  4008: closeRow(
    "SLOW_CONSUMER",
    RECONNECT,
    "slow consumer",
    "The client did not read fast enough and its outbox overflowed.",
  ),
  4009: closeRow("RATE_LIMITED", RECONNECT, "rate limited", "The client kept exceeding its rate."),
  4010: closeRow(
    "KICKED",
    TERMINAL,
    "kicked",
    "An operator or the application removed the client.",
  ),
  4011: closeRow("AUTH_FAILED", TERMINAL, "auth failed", "The credentials are invalid or expired."),
  4012: closeRow("REPLACED", TERMINAL, "replaced", "A newer connection took over this session."),
});

/** The close codes by name: `CloseCode.GOING_AWAY === 1001`. */
export const CloseCode = Object.freeze(
  Object.fromEntries(Object.entries(CLOSE_CODES).map(([code, row]) => [row.name, Number(code)])),
);

/**
 * Whether a client should reconnect after its connection closed with `code`. `null` or
 * `undefined` (no close frame) and codes outside the table reconnect, except the
 * application-defined terminal range 4500-4999.
 */
export function shouldReconnect(code) {
  if (code === null || code === undefined) return true;
  const row = CLOSE_CODES[code];
  if (row !== undefined) return row.reconnect;
  return !(code >= 4500 && code <= 4999);
}

// Errors ---------------------------------------------------------------------------------------

/** Base class of every roomd error: a stable `code` and a human `message`. */
export class RoomdError extends Error {
  constructor(code, message) {
    super(message);
    this.name = new.target.name;
    this.code = code;
  }
}

/** The node answered a call with an error (its `code` and `message`). */
export class AckError extends RoomdError {}

/** No answer in time (code `timeout`). */
export class RequestTimeout extends RoomdError {
  constructor(message, code = "timeout") {
    super(code, message);
  }
}

/** Sent, but the connection dropped before the ack: whether the node handled it is unknown. */
export class ConnectionLost extends RequestTimeout {
  constructor(message) {
    super(message, "connection_lost");
  }
}

/** Base class of the errors raised by the client itself. */
export class ClientError extends RoomdError {}

/** The client is not open and its offline queue is full: the event was not queued. */
export class OfflineQueueFull extends ClientError {
  constructor(size) {
    super("offline_queue_full", `disconnected and the offline queue is full (${size} frames)`);
    this.size = size;
  }
}

/** The client is closed (by the application, a terminal close code, or the repeat limit). */
export class ClientClosed extends ClientError {
  constructor(message, closeCode = null, reason = "") {
    super("closed", message);
    this.closeCode = closeCode;
    this.reason = reason;
  }
}

/** The first connection could not be made (terminal close code, or the repeat limit). */
export class ConnectFailed extends ClientError {
  constructor(message, closeCode = null, reason = "") {
    super("connect_failed", message);
    this.closeCode = closeCode;
    this.reason = reason;
  }
}

/** The URL does not lead to a roomd node this client can speak to. */
export class InvalidServer extends ClientError {
  constructor(url, problem) {
    super("invalid_server", `${url}: ${problem}`);
    this.url = url;
    this.problem = problem;
  }
}

/** Thrown by a request handler: answered as an error ack with this code and message. */
export class HandlerError extends RoomdError {}

// Backoff --------------------------------------------------------------------------------------

/**
 * Exponential backoff with full jitter: the delay before reconnect attempt n (1, 2, 3 ...) is
 * uniform in [0, min(maxDelay, base * 2^(n-1))) seconds. `attempts` bounds the attempts in a row
 * (null: never give up); a connection that opened resets the count.
 */
export class Backoff {
  constructor({ base = 0.5, maxDelay = 30, attempts = null } = {}) {
    if (!(base > 0) || !(maxDelay >= base)) {
      throw new RangeError("backoff: need 0 < base <= maxDelay");
    }
    if (attempts !== null && !(Number.isInteger(attempts) && attempts >= 0)) {
      throw new RangeError("backoff: attempts must be an integer >= 0, or null");
    }
    this.base = base;
    this.maxDelay = maxDelay;
    this.attempts = attempts;
    Object.freeze(this);
  }

  ceiling(attempt) {
    if (attempt < 1) throw new RangeError("attempt numbers start at 1");
    return Math.min(this.maxDelay, this.base * 2 ** Math.min(attempt - 1, 64));
  }

  delay(attempt, random) {
    return random() * this.ceiling(attempt);
  }

  exhausted(attempt) {
    return this.attempts !== null && attempt > this.attempts;
  }
}

/**
 * What to do after a connection ended with `code`, before reconnect attempt `attempt`:
 * `{reconnect: true, attempt, delay}` or `{reconnect: false, gaveUp, reason}`.
 */
export function decide(code, attempt, backoff, random) {
  if (!shouldReconnect(code)) {
    return { reconnect: false, gaveUp: false, reason: `terminal close code ${code}` };
  }
  if (backoff.exhausted(attempt)) {
    return {
      reconnect: false,
      gaveUp: true,
      reason: `gave up after ${attempt - 1} reconnect attempts`,
    };
  }
  return { reconnect: true, attempt, delay: backoff.delay(attempt, random) };
}

// Rate -----------------------------------------------------------------------------------------

/** The client keeps to this share of the rate and burst a node announces (arrival jitter). */
export const PACE_SHARE = 0.9;

/**
 * The node's rate limit kept from the client's side: a token bucket of `rate` tokens a second
 * holding at most `burst`, one token a frame. Times are in seconds.
 */
export class Pacer {
  constructor(rate, burst, now, spent = 0) {
    if (!(rate > 0) || !(burst >= 1)) throw new RangeError("pacer: need rate > 0 and burst >= 1");
    this.rate = rate;
    this.burst = burst;
    this.tokens = burst - spent;
    this.stamp = now;
  }

  /** A pacer keeping PACE_SHARE of a welcome's limits, or null when they set no usable limit. */
  static fromLimits(limits, now, spent = 0) {
    if (!limits || !(limits.rate > 0) || !(limits.burst >= 1)) return null;
    return new Pacer(limits.rate * PACE_SHARE, Math.max(1, limits.burst * PACE_SHARE), now, spent);
  }

  _refill(now) {
    this.tokens = Math.min(this.burst, this.tokens + Math.max(0, now - this.stamp) * this.rate);
    this.stamp = now;
  }

  /** Seconds until a frame may be sent (0: now). Takes nothing. */
  wait(now) {
    this._refill(now);
    return this.tokens >= 1 ? 0 : (1 - this.tokens) / this.rate;
  }

  /** Count one frame (a frame that must not wait may take the bucket into debt). */
  take(now) {
    this._refill(now);
    this.tokens -= 1;
  }
}

// URLs and /health -----------------------------------------------------------------------------

/**
 * The WebSocket URL to connect to: `url` with `user`, `token` and `params` in its query.
 * http(s) URLs become ws(s); an empty path becomes "/". Throws TypeError for other URLs.
 */
export function clientUrl(url, { user = null, token = null, params = null } = {}) {
  const parsed = parseUrl(url, { ws: "ws:", wss: "wss:", http: "ws:", https: "wss:" });
  for (const [key, value] of Object.entries(params ?? {})) {
    parsed.searchParams.set(key, String(value));
  }
  if (user !== null && user !== undefined) parsed.searchParams.set("user", user);
  if (token) parsed.searchParams.set("token", token);
  parsed.hash = "";
  return parsed.toString();
}

/** The plain HTTP URL of `path` on the node behind `url` (ws, wss, http or https). */
export function httpUrl(url, path) {
  const parsed = parseUrl(url, { ws: "http:", wss: "https:", http: "http:", https: "https:" });
  return `${parsed.protocol}//${parsed.host}${path}`;
}

function parseUrl(url, schemes) {
  let parsed;
  try {
    parsed = new URL(String(url));
  } catch {
    throw new TypeError(`not a URL: ${JSON.stringify(url)} (expected ws://host:port/...)`);
  }
  const scheme = schemes[parsed.protocol.slice(0, -1).toLowerCase()];
  if (scheme === undefined || !parsed.hostname) {
    throw new TypeError(`not a roomd URL: ${JSON.stringify(url)} (expected ws://host:port/...)`);
  }
  // URL refuses to switch between special and non-special schemes in place; all four are special.
  parsed.protocol = scheme;
  if (!parsed.pathname) parsed.pathname = "/";
  return parsed;
}

const HEALTH_FIELDS = Object.freeze({
  name: "string",
  status: "string",
  version: "string",
  protocol: "integer",
  uptime: "number",
  connections: "integer",
  users: "integer",
  rooms: "integer",
});

/** Check a /health answer: the node's Health, or InvalidServer saying what is wrong. */
export function parseHealth(url, status, body) {
  if (status !== 200) {
    throw new InvalidServer(url, `GET /health answered HTTP ${status}: not a roomd node`);
  }
  let data;
  try {
    data = JSON.parse(body);
  } catch {
    throw new InvalidServer(url, "GET /health did not answer JSON: not a roomd node");
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new InvalidServer(url, "GET /health did not answer a JSON object: not a roomd node");
  }
  const missing = Object.entries(HEALTH_FIELDS)
    .filter(([key, kind]) => !hasKind(data[key], kind))
    .map(([key]) => key);
  if (missing.length > 0) {
    throw new InvalidServer(
      url,
      `GET /health lacks roomd fields (${missing.join(", ")}): not a roomd node`,
    );
  }
  if (!SUPPORTED_VERSIONS.includes(data.protocol)) {
    throw new InvalidServer(
      url,
      `the node speaks protocol version ${data.protocol}; this client speaks ${SUPPORTED_VERSIONS.join(", ")}`,
    );
  }
  const health = {};
  for (const key of Object.keys(HEALTH_FIELDS)) health[key] = data[key];
  return Object.freeze(health);
}

function hasKind(value, kind) {
  if (kind === "integer") return Number.isInteger(value);
  if (kind === "number") return typeof value === "number" && Number.isFinite(value);
  return typeof value === kind;
}

/**
 * GET /health of the node behind `url`, checked. Rejects only with InvalidServer, whose message
 * says whether the node could not be reached (in a browser, also: its /health does not allow
 * this page's origin), answered too slowly, or is not a roomd node of a supported version.
 */
export async function fetchHealth(url, { timeout = 5, fetch: fetchFn = globalThis.fetch } = {}) {
  let target;
  try {
    target = httpUrl(url, "/health");
  } catch (error) {
    throw new InvalidServer(String(url), error.message);
  }
  if (typeof fetchFn !== "function") throw new InvalidServer(url, "no fetch() in this runtime");
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeout * 1000);
  try {
    const answer = await fetchFn(target, {
      signal: abort.signal,
      headers: { Accept: "application/json" },
      cache: "no-store",
    });
    return parseHealth(url, answer.status, await answer.text());
  } catch (error) {
    if (error instanceof InvalidServer) throw error;
    if (abort.signal.aborted) {
      throw new InvalidServer(url, `no answer to GET /health within ${timeout} s`);
    }
    throw new InvalidServer(url, `cannot reach its /health (${error.message ?? error})`);
  } finally {
    clearTimeout(timer);
  }
}

// Client events --------------------------------------------------------------------------------

/**
 * Names of the client's own events. They start with "$", which keeps them apart from the node's
 * push events (an application should not name its pushes with a leading "$").
 */
export const Lifecycle = Object.freeze({
  STATE: "$state", // {state, previous}
  OPEN: "$open", // Opened: after the welcome, the re-joins and the offline flush
  CLOSE: "$close", // {code, reason, reconnect, local}: every time a connection ends
  RECONNECTING: "$reconnecting", // {attempt, delay, url}: before waiting `delay` seconds
  REPEAT_LIMIT: "$repeat-limit", // {attempts, code, reason}: backoff.attempts reached
  PONG: "$pong", // {rtt, smoothed, serverTs}: each heartbeat pong (seconds)
  ERROR: "$error", // {code, message}: an error frame not tied to a call, or a bad frame
  EMIT_FAILED: "$emit-failed", // {event, data, cmid, code, message}: a queued emit not handled
});

/** Listen to every push from the node. */
export const ANY_PUSH = "*";

export const State = Object.freeze({
  IDLE: "idle", // created, connect() not called yet
  CONNECTING: "connecting", // connecting, handshaking, re-joining or flushing
  OPEN: "open",
  RECONNECTING: "reconnecting", // waiting out a backoff delay
  CLOSED: "closed",
});

// Error codes of a re-join that say "not now" rather than "never": the connection is dropped and
// the client reconnects with backoff (other codes drop the room: Opened.rejoinFailed).
const TRANSIENT_REJOIN_ERRORS = new Set(["rate_limited", "busy", "timeout"]);
const MAX_CONCURRENT_REQUESTS = 32; // node requests answered at once; more are refused
const RTT_GAIN = 0.125; // weight of a new sample in the smoothed RTT (RFC 6298's alpha)
const MAX_CLOSE_REASON_BYTES = 123;
const LATE = Symbol("late"); // a request handler that outlived the request's timeout

const DEFAULTS = Object.freeze({
  heartbeatInterval: 15,
  heartbeatTimeout: 10,
  connectTimeout: 10,
  callTimeout: 10,
  closeTimeout: 2,
  healthTimeout: 2,
  offlineQueue: 256,
});

function sleep(seconds) {
  return seconds > 0
    ? new Promise((resolve) => setTimeout(resolve, seconds * 1000))
    : Promise.resolve();
}

function now() {
  return performance.now() / 1000;
}

function wallClock() {
  return (performance.timeOrigin + performance.now()) / 1000;
}

function randomPrefix() {
  const bytes = new Uint8Array(6);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(36).padStart(2, "0"))
    .join("")
    .slice(0, 8);
}

function positive(name, value) {
  if (typeof value !== "number" || !(value > 0)) {
    throw new RangeError(`${name} must be a positive number of seconds, not ${value}`);
  }
  return value;
}

function roomKey(value) {
  if (value === null || typeof value !== "object") return null;
  const room = value.room;
  const ns = value.ns ?? DEFAULT_NAMESPACE;
  return typeof room === "string" && typeof ns === "string" ? { ns, room } : null;
}

/** A stream position `{epoch, offset}` from a value carrying both, else null. */
function streamPosition(value) {
  if (value === null || typeof value !== "object") return null;
  const { epoch, offset } = value;
  return typeof epoch === "string" && Number.isInteger(offset) ? { epoch, offset } : null;
}

const roomId = (key) => `${key.ns}\u0000${key.room}`;

/**
 * The rooms a client is in, learnt from the acks of room.join and room.leave, in join order, and
 * its position in each room's stream (from the join's ack, then from each push of the room).
 */
class RoomSet {
  constructor() {
    this._rooms = new Map(); // id -> {key, at: {epoch, offset} | null}
  }

  observe(event, data, result) {
    if (event !== "room.join" && event !== "room.leave") return;
    const key = roomKey(result) ?? roomKey(data);
    if (key === null) return;
    const id = roomId(key);
    if (event === "room.leave") {
      this._rooms.delete(id);
      return;
    }
    const at = streamPosition(result);
    const known = this._rooms.get(id);
    if (known === undefined) this._rooms.set(id, { key, at });
    else if (at !== null && (known.at === null || at.offset >= known.at.offset)) known.at = at;
  }

  /** Re-joined on a new session: its reading starts where the join's ack says. */
  rejoined(key, result) {
    const known = this._rooms.get(roomId(key));
    if (known !== undefined) known.at = streamPosition(result);
  }

  /** A push of the room's stream arrived. */
  saw(key, at) {
    const known = this._rooms.get(roomId(key));
    if (known !== undefined) known.at = at;
  }

  /** Where the client is in each room's stream, for a resume: [{ns, room, epoch, offset}]. */
  positions() {
    return Array.from(this._rooms.values())
      .filter(({ at }) => at !== null)
      .map(({ key, at }) => ({ ns: key.ns, room: key.room, epoch: at.epoch, offset: at.offset }));
  }

  discard(key) {
    this._rooms.delete(roomId(key));
  }

  list() {
    return Array.from(this._rooms.values(), ({ key }) => ({ ...key }));
  }
}

// The client -----------------------------------------------------------------------------------

/**
 * A roomd client session that survives disconnects.
 *
 * `new RoomdClient(url | urls, options)`, register listeners with `on`, then `await connect()`.
 * Resource handling: the client owns its WebSocket, timers and queues; `close()` closes the
 * connection with 1000 and stops reconnecting. Every queue is bounded (`offlineQueue`).
 * Error handling: calls reject with AckError, RequestTimeout, ConnectionLost, OfflineQueueFull
 * or ClientClosed; `connect()` rejects with ConnectFailed if the first connection fails for good.
 */
export class RoomdClient {
  constructor(urls, options = {}) {
    const list = Array.isArray(urls) ? [...urls] : [urls];
    if (list.length === 0) throw new TypeError("RoomdClient: give at least one node URL");
    for (const url of list) clientUrl(url); // validate early: a bad URL is the caller's mistake
    this._urls = list; // tried in turn; a node's reconnect frame may add its alternates
    const o = { ...DEFAULTS, ...options };
    this.user = o.user ?? null;
    this._token = o.token ?? null;
    this.params = { ...(o.params ?? {}) };
    this.backoff = o.backoff instanceof Backoff ? o.backoff : new Backoff(o.backoff ?? {});
    this.heartbeatInterval = positive("heartbeatInterval", o.heartbeatInterval);
    this.heartbeatTimeout = positive("heartbeatTimeout", o.heartbeatTimeout);
    this.connectTimeout = positive("connectTimeout", o.connectTimeout);
    this.callTimeout = positive("callTimeout", o.callTimeout);
    this.closeTimeout = positive("closeTimeout", o.closeTimeout);
    this.healthTimeout = positive("healthTimeout", o.healthTimeout);
    if (!(Number.isInteger(o.offlineQueue) && o.offlineQueue >= 0)) {
      throw new RangeError("offlineQueue must be an integer >= 0");
    }
    this.offlineQueue = o.offlineQueue;
    this.resume = o.resume ?? true;
    this.preferLeastLoaded = o.preferLeastLoaded ?? true;
    this.clientName = o.clientName ?? `roomd-js/${VERSION}`;
    this._WebSocket = o.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") {
      throw new TypeError(
        "no WebSocket in this runtime: pass options.WebSocket (Node.js 20: run with --experimental-websocket)",
      );
    }
    this._fetch = o.fetch ?? globalThis.fetch;
    this._random = o.random ?? Math.random;
    this._cmidPrefix = randomPrefix();
    this._cmidCounter = 0;
    this._listeners = new Map(); // event -> Set of functions
    this._requestHandlers = new Map();
    this._queue = []; // Outgoing items not written yet, in order (offline queue and pacing)
    this._pending = new Map(); // call id -> item awaiting its ack
    this._nextId = 0;
    this._rooms = new RoomSet();
    this._state = State.IDLE;
    this._conn = null; // the current connection, from the WebSocket's creation on
    this._attempt = 0; // reconnect attempts in a row
    this._retryTimer = null;
    this._closing = false;
    this._opened = null; // the connect() promise and its settlers
    this._lastWelcome = null;
    this._lastUrl = null; // the URL of the last connection attempt
    this._openedOnce = false;
    this._lastSeq = 0;
    this._inbox = null; // the position in the user's inbox stream: {epoch, offset}
    this._unacked = []; // calls sent, not acknowledged when their connection dropped
    this._moveTo = null; // a node's reconnect frame: resume there at once
    this.rtt = { latest: null, smoothed: null, samples: 0 };
    this.reconnects = 0; // connections opened after the first one
    this.closeCode = null; // of the last connection
    this.closeReason = "";
  }

  // State --------------------------------------------------------------------------------------

  /** The node URLs, in the order tried (alternates named by a draining node are added). */
  get urls() {
    return Object.freeze([...this._urls]);
  }

  get state() {
    return this._state;
  }

  get connected() {
    return this._state === State.OPEN;
  }

  /** The last welcome (kept while disconnected). */
  get welcome() {
    return this._lastWelcome;
  }

  get session() {
    return this._lastWelcome?.session ?? null;
  }

  get node() {
    return this._lastWelcome?.node ?? null;
  }

  /** The URL of the current (or last) connection. */
  get url() {
    return this._conn?.url ?? this._lastUrl;
  }

  /** Whether the node continued the previous session on the last (re)connect. */
  get resumed() {
    return this._lastWelcome?.resumed ?? false;
  }

  /** The rooms joined (re-joined after each reconnect), as {ns, room}. */
  get rooms() {
    return this._rooms.list();
  }

  /** Events not sent yet (the offline queue, and frames waiting for their turn). */
  get queued() {
    return this._queue.length;
  }

  /** The sequence number of the last reliable push received. */
  get lastSeq() {
    return this._lastSeq;
  }

  /**
   * Where the client is in the streams it follows (what a resume presents): `rooms`
   * (`[{ns, room, epoch, offset}]`) and `inbox` (`{epoch, offset}` or null).
   */
  get positions() {
    return {
      rooms: this._rooms.positions(),
      inbox: this._inbox === null ? null : { ...this._inbox },
    };
  }

  // Listeners ----------------------------------------------------------------------------------

  /**
   * Call `fn(item)` for each `event`: a push event name (the push frame), "*" for every push, or
   * a Lifecycle name. Returns a function that removes the listener.
   */
  on(event, fn) {
    if (typeof fn !== "function") throw new TypeError("on(event, fn): fn must be a function");
    let set = this._listeners.get(event);
    if (set === undefined) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    const set = this._listeners.get(event);
    if (set === undefined) return;
    if (fn === undefined) set.clear();
    else set.delete(fn);
    if (set.size === 0) this._listeners.delete(event);
  }

  /** Call `fn` for the next `event` only; resolves with its item. */
  once(event) {
    return new Promise((resolve) => {
      const off = this.on(event, (item) => {
        off();
        resolve(item);
      });
    });
  }

  /**
   * Answer the node's `request` frames for `event` with `handler(data, request)` (sync or async):
   * its value is the ack's result; a HandlerError becomes an error ack with its code. `null`
   * removes the handler.
   */
  onRequest(event, handler) {
    if (handler === null) this._requestHandlers.delete(event);
    else if (typeof handler === "function") this._requestHandlers.set(event, handler);
    else throw new TypeError("onRequest(event, handler): handler must be a function or null");
  }

  _publish(event, item) {
    const set = this._listeners.get(event);
    if (set === undefined) return;
    for (const fn of [...set]) {
      try {
        fn(item);
      } catch (error) {
        console.error(`roomd: a listener of ${JSON.stringify(event)} failed`, error);
      }
    }
  }

  _setState(state) {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this._publish(Lifecycle.STATE, { state, previous });
  }

  // Sending ------------------------------------------------------------------------------------

  /**
   * Send `event` without waiting for an ack. Resolves once it is written to the connection, or
   * queued while the client is not open (sent in order on reconnect). Rejects with
   * OfflineQueueFull or ClientClosed.
   */
  emit(event, data = null) {
    return new Promise((resolve, reject) => {
      const item = this._outgoing(event, data);
      item.accepted = resolve;
      this._submit(item, reject);
      if (this._queue.includes(item) && item.offline) resolve();
    }).then(() => this._rooms.observe(event, data, null));
  }

  /**
   * Send `event` and resolve with its ack's result. `timeout` (seconds, default callTimeout)
   * covers the whole wait, time in the offline queue included: a call that times out there is
   * never sent. `onPending(info)` is called if the call has to wait in the offline queue.
   * With a `callback(error, result)` as last argument, returns nothing and calls it instead.
   */
  call(event, data = null, options = {}, callback = undefined) {
    if (typeof options === "function") [options, callback] = [{}, options];
    let promise;
    try {
      promise = this._call(event, data, options ?? {});
    } catch (error) {
      promise = Promise.reject(error);
    }
    if (typeof callback !== "function") return promise;
    promise.then(
      (result) => callback(null, result),
      (error) => callback(error, undefined),
    );
    return undefined;
  }

  _call(event, data, { timeout = this.callTimeout, onPending = null }) {
    positive("timeout", timeout);
    return new Promise((resolve, reject) => {
      const item = this._outgoing(event, data);
      item.waiter = { resolve, reject };
      item.timer = setTimeout(() => {
        this._abandon(item);
        reject(new RequestTimeout(`no ack for ${JSON.stringify(event)} within ${timeout} s`));
      }, timeout * 1000);
      if (!this._submit(item, reject)) {
        clearTimeout(item.timer);
      } else if (item.offline && typeof onPending === "function") {
        try {
          onPending({ event, cmid: item.cmid, queued: this._queue.length, state: this._state });
        } catch (error) {
          console.error("roomd: onPending failed", error);
        }
      }
    }).then((result) => {
      this._rooms.observe(event, data, result);
      return result;
    });
  }

  _outgoing(event, data) {
    if (typeof event !== "string" || event.length === 0) {
      throw new TypeError("the event name must be a non-empty string");
    }
    this._cmidCounter += 1;
    return {
      event,
      data: data === undefined ? null : data,
      cmid: `${this._cmidPrefix}-${this._cmidCounter}`,
      offline: false, // queued while the client was not open: sent with an id, failures reported
      waiter: null, // a call's settlers
      accepted: null, // an emit's settler
      timer: null,
      callId: null,
      abandoned: false,
      internal: false, // the client's own call (a re-join): never sent again
    };
  }

  /** Queue `item` for sending; false (and `reject` called) when it cannot be accepted. */
  _submit(item, reject) {
    if (this._state === State.CLOSED || this._closing) {
      reject(this._closedError());
      return false;
    }
    if (this._state !== State.OPEN) {
      if (this._queue.length >= this.offlineQueue) {
        reject(new OfflineQueueFull(this.offlineQueue));
        return false;
      }
      item.offline = true;
    }
    this._queue.push(item);
    this._pump();
    return true;
  }

  _abandon(item) {
    item.abandoned = true;
    for (const list of [this._queue, this._unacked]) {
      const index = list.indexOf(item);
      if (index >= 0) list.splice(index, 1);
    }
    if (item.callId !== null) this._pending.delete(item.callId);
  }

  /** Write queued items in order, each in its turn under the node's rate limit. */
  _pump() {
    const conn = this._conn;
    if (conn === null || !conn.ready || conn.pumpTimer !== null) return;
    while (this._queue.length > 0) {
      if (conn.ws.readyState !== 1) return; // closing: the queue waits for the next connection
      const wait = conn.pacer === null ? 0 : conn.pacer.wait(now());
      if (wait > 0) {
        conn.pumpTimer = setTimeout(
          () => {
            conn.pumpTimer = null;
            this._pump();
          },
          Math.ceil(wait * 1000),
        );
        return;
      }
      const item = this._queue.shift();
      this._send(conn, item);
    }
    if (!conn.opened) this._becomeOpen(conn);
  }

  /** Write `item` now on `conn` (its pacer token is taken here). */
  _send(conn, item) {
    if (item.offline && item.waiter === null) {
      // A queued emit's caller returned long ago: send it with an id so that a refusal or a
      // lost connection can be reported (Lifecycle.EMIT_FAILED).
      item.waiter = {
        resolve: () => {},
        reject: (error) => this._emitFailed(item, error),
      };
    }
    const frame = { type: "event", event: item.event, cmid: item.cmid };
    if (item.data !== null) frame.data = item.data;
    if (item.waiter !== null) {
      item.callId = ++this._nextId;
      frame.id = item.callId;
      this._pending.set(item.callId, item);
    }
    let text;
    try {
      text = JSON.stringify(frame);
    } catch (error) {
      this._settle(item, new TypeError(`event data has no JSON form: ${error.message}`));
      return;
    }
    if (conn.pacer !== null) conn.pacer.take(now());
    conn.ws.send(text);
    if (item.accepted !== null) item.accepted();
  }

  /** Write a frame that must not wait (ping, answers to requests); it still counts. */
  _sendNow(conn, frame) {
    if (conn !== this._conn || conn.ws.readyState !== 1) return false;
    if (conn.pacer !== null) conn.pacer.take(now());
    conn.ws.send(JSON.stringify(frame));
    return true;
  }

  _settle(item, error, result) {
    if (item.callId !== null) this._pending.delete(item.callId);
    clearTimeout(item.timer);
    if (item.waiter === null) return;
    if (error) item.waiter.reject(error);
    else item.waiter.resolve(result);
  }

  _emitFailed(item, error) {
    const failed = {
      event: item.event,
      data: item.data,
      cmid: item.cmid,
      code: error.code ?? error.name,
      message: error.message,
    };
    this._publish(Lifecycle.EMIT_FAILED, failed);
  }

  _closedError() {
    const why = [this.closeCode, this.closeReason].filter((part) => part !== null && part !== "");
    const text = why.length > 0 ? `client closed (${why.join(" ")})` : "client closed";
    return new ClientClosed(text, this.closeCode, this.closeReason);
  }

  // Built-in events ----------------------------------------------------------------------------

  /** Join a room (re-joined automatically after reconnects); the node's answer. */
  join(room, ns = DEFAULT_NAMESPACE) {
    return this.call("room.join", { room, ns });
  }

  leave(room, ns = DEFAULT_NAMESPACE) {
    return this.call("room.leave", { room, ns });
  }

  async members(room, ns = DEFAULT_NAMESPACE) {
    return (await this.call("room.members", { room, ns })).members;
  }

  async onlineUsers() {
    return (await this.call("users.online", {})).users;
  }

  /**
   * The users online now; from then on the node pushes the whole list again as a
   * "users.online" push (`{users}`) whenever it changes. A session that is not resumed (and one
   * that moved to another node) must subscribe again: call it on every open.
   */
  async subscribeUsers() {
    return (await this.call("users.subscribe", {})).users;
  }

  unsubscribeUsers() {
    return this.call("users.unsubscribe", {});
  }

  /**
   * A room's messages (members only): those after `since` (`{epoch, offset}`), or its last
   * `limit`. Resolves with `{ns, room, messages, epoch, offset}`: pushes without `seq`, and where
   * the room's stream stands. Rejects with AckError `history_gap` when `since` is older than what
   * the node keeps.
   */
  history(room, { ns = DEFAULT_NAMESPACE, since = null, limit = null } = {}) {
    const data = { room, ns };
    if (since !== null) data.since = { epoch: since.epoch, offset: since.offset };
    if (limit !== null) data.limit = limit;
    return this.call("room.history", data);
  }

  /**
   * Send a chat message (`{type, payload, metadata?}`, see docs/protocol.md) to a target:
   * `{room, ns?}`, `{user}`, `{users}` or `{all: true}`. Resolves with `{messageId}`.
   */
  send(to, message, { exceptSelf = false, volatile = false } = {}) {
    const data = { to, data: message };
    if (exceptSelf) data.exceptSelf = true;
    if (volatile) data.volatile = true;
    return this.call("send", data);
  }

  /** Send a text message to a room (`{room, ns?}`) or a user (`{user}`). */
  sendText(text, target) {
    const { room, user, ns = DEFAULT_NAMESPACE } = target ?? {};
    if ((room === undefined) === (user === undefined)) {
      return Promise.reject(new TypeError("sendText: give exactly one of room, user"));
    }
    const to = room !== undefined ? { room, ns } : { user };
    return this.send(to, { type: "text", payload: { content: text } });
  }

  typing(room, typing = true, ns = DEFAULT_NAMESPACE) {
    return this.emit("typing", { room, ns, typing });
  }

  setStatus(status, text = null) {
    return this.call("status", text === null ? { status } : { status, text });
  }

  // Running ------------------------------------------------------------------------------------

  /**
   * Connect and stay connected until close(), a terminal close code or the repeat limit.
   * Resolves with the first Opened; rejects with ConnectFailed if the first connection fails for
   * good. Calling it again returns the same promise; once closed, it rejects with ClientClosed
   * (a client runs only once).
   */
  connect() {
    if (this._state === State.CLOSED) return Promise.reject(this._closedError());
    if (this._opened !== null) return this._opened.promise;
    let settle;
    const promise = new Promise((resolve, reject) => {
      settle = { resolve, reject };
    });
    this._opened = { promise, ...settle, done: false };
    this._connectNext();
    return promise;
  }

  /**
   * While waiting out a reconnect delay, try now (when the application knows the network is
   * back: a browser's "online" event). Whether an attempt started.
   */
  reconnectNow() {
    if (this._state !== State.RECONNECTING || this._retryTimer === null) return false;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._connectNext();
    return true;
  }

  /** Close the connection (1000) and stop reconnecting; resolves once closed. */
  close() {
    if (this._state === State.CLOSED) return Promise.resolve();
    this._closing = true;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const conn = this._conn;
    if (conn === null) {
      this._finish();
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const done = this.on(Lifecycle.STATE, ({ state }) => {
        if (state === State.CLOSED) {
          done();
          resolve();
        }
      });
      safeClose(conn.ws, CloseCode.NORMAL, "closed by client");
      conn.closeTimer = setTimeout(() => {
        this._dropped(conn, { code: CloseCode.NORMAL, reason: "closed by client", local: true });
      }, this.closeTimeout * 1000);
    });
  }

  _failStart(error) {
    const opened = this._opened;
    if (opened !== null && !opened.done) {
      opened.done = true;
      opened.reject(error);
    }
  }

  async _connectNext() {
    this._setState(State.CONNECTING);
    let url;
    let token;
    try {
      url = await this._pickUrl();
      token = typeof this._token === "function" ? await this._token() : this._token;
    } catch (error) {
      // A token source that fails is the application's error: stop rather than loop on it.
      this.closeCode = null;
      this.closeReason = `no token: ${error.message ?? error}`;
      this._failStart(new ConnectFailed(`cannot connect: ${this.closeReason}`));
      this._finish();
      return;
    }
    if (this._closing) {
      this._finish();
      return;
    }
    this._lastUrl = url;
    const address = clientUrl(url, { user: this.user, token, params: this.params });
    let ws;
    try {
      ws = new this._WebSocket(address, [SUBPROTOCOL]);
    } catch (error) {
      this._afterClose(false, {
        code: CloseCode.ABNORMAL,
        reason: `cannot connect: ${error.message ?? error}`,
        local: true,
      });
      return;
    }
    const conn = {
      ws,
      url,
      welcome: null,
      pacer: null,
      ready: false, // welcomed and re-joined: the queue may be sent
      opened: false, // the client became OPEN on it
      done: false,
      verdict: null, // the client's own reason to drop it
      pingTs: null,
      requests: 0,
      connectTimer: null,
      heartbeatTimer: null,
      pongTimer: null,
      pumpTimer: null,
      closeTimer: null,
    };
    this._conn = conn;
    conn.connectTimer = setTimeout(() => {
      const code = ws.readyState === 1 ? CloseCode.HANDSHAKE_TIMEOUT : CloseCode.ABNORMAL;
      const reason = ws.readyState === 1 ? "no welcome in time" : "no WebSocket upgrade in time";
      this._drop(conn, { code, reason, local: true });
    }, this.connectTimeout * 1000);
    ws.onopen = () => this._hello(conn);
    ws.onmessage = (message) => this._onMessage(conn, message.data);
    ws.onclose = (event) => this._dropped(conn, closedByPeer(event));
    ws.onerror = () => {
      // Before the upgrade, some runtimes (Node.js 20) report a refused connection by an error
      // alone. Once open, a close event with the code follows every error.
      if (ws.readyState !== 1 && ws.readyState !== 2) {
        this._dropped(conn, { code: CloseCode.ABNORMAL, reason: "cannot connect", local: true });
      }
    };
  }

  /** The URL to connect to: the least loaded healthy node, else the next one in turn. */
  async _pickUrl() {
    if (this._moveTo !== null) {
      const url = this._moveTo; // named by the node: tried first, once
      this._moveTo = null;
      return url;
    }
    const urls = this._urls;
    const last = this._lastUrl;
    const next = urls[(urls.indexOf(last) + 1) % urls.length];
    if (urls.length === 1 || !this.preferLeastLoaded || typeof this._fetch !== "function") {
      return last === null ? urls[0] : next;
    }
    const options = { timeout: this.healthTimeout, fetch: this._fetch };
    const answers = await Promise.all(
      urls.map((url) =>
        fetchHealth(url, options).then(
          (health) => health,
          () => null,
        ),
      ),
    );
    const ranked = urls
      .map((url, index) => ({ url, index, health: answers[index] }))
      .filter(({ health }) => health !== null && health.status === "ok")
      .sort(
        (a, b) =>
          (a.url === last) - (b.url === last) ||
          a.health.connections - b.health.connections ||
          a.index - b.index,
      );
    if (ranked.length > 0) return ranked[0].url;
    return last === null ? urls[0] : next;
  }

  _hello(conn) {
    const hello = { type: "hello", v: PROTOCOL_VERSION, client: this.clientName };
    const last = this._lastWelcome;
    if (this.resume && last !== null) {
      // The node continues the session if it can, from where the client is in each stream.
      const resume = { session: last.session, token: last.resumeToken, seq: this._lastSeq };
      const rooms = this._rooms.positions();
      if (rooms.length > 0) resume.rooms = rooms;
      if (this._inbox !== null) resume.inbox = this._inbox;
      hello.resume = resume;
    }
    conn.ws.send(JSON.stringify(hello));
  }

  _onMessage(conn, raw) {
    if (conn !== this._conn) return;
    let frame;
    try {
      if (typeof raw !== "string") throw new Error("a binary frame on a JSON connection");
      frame = JSON.parse(raw);
      if (frame === null || typeof frame !== "object" || typeof frame.type !== "string") {
        throw new Error("not a frame object with a type");
      }
    } catch (error) {
      this._problem({
        code: "bad_frame",
        message: `undecodable frame from the node: ${error.message}`,
      });
      return;
    }
    if (conn.welcome === null) {
      if (frame.type === "welcome") this._welcomed(conn, frame);
      else if (frame.type === "error") this._problem(frame);
      else if (frame.type === "pong") this._onPong(conn, frame);
      return;
    }
    switch (frame.type) {
      case "ack":
        return this._onAck(frame);
      case "push":
        return this._onPush(frame);
      case "pong":
        return this._onPong(conn, frame);
      case "request":
        return this._onRequest(conn, frame);
      case "error":
        return this._onError(frame);
      case "reconnect":
        return this._onReconnect(conn, frame);
      default:
        return; // newer nodes may add frames (protocol.md, Compatibility)
    }
  }

  _welcomed(conn, welcome) {
    clearTimeout(conn.connectTimer);
    if (!SUPPORTED_VERSIONS.includes(welcome.v)) {
      const code = CloseCode.UNSUPPORTED_VERSION;
      safeClose(conn.ws, code, "unsupported protocol version");
      this._drop(conn, { code, reason: `node speaks protocol version ${welcome.v}`, local: true });
      return;
    }
    conn.welcome = welcome;
    conn.pacer = Pacer.fromLimits(welcome.limits, now(), 1); // the hello counted already
    this._lastWelcome = welcome;
    if (!welcome.resumed) {
      this._lastSeq = welcome.seq ?? 0;
      this._inbox = streamPosition(welcome.inbox);
    }
    this._startHeartbeat(conn);
    if (welcome.resumed) this._resend(conn);
    else this._rejoin(conn);
  }

  /**
   * A resumed session: the node kept its rooms and replays what it missed; the calls not
   * acknowledged before the drop go again, in order, with their cmid (the node answers one it
   * handled already with its first result). Then the queue is flushed, the client is open.
   */
  async _resend(conn) {
    let resent = 0;
    while (this._unacked.length > 0) {
      await sleep(conn.pacer === null ? 0 : conn.pacer.wait(now()));
      if (conn !== this._conn) return; // dropped again: the rest waits for the next connection
      this._send(conn, this._unacked.shift());
      resent += 1;
    }
    this._ready(conn, { rejoined: [], rejoinFailed: [], resent });
  }

  /** A new session: re-join every room, in order; then the queue is flushed, the client opens. */
  async _rejoin(conn) {
    const lost = new ConnectionLost("the connection dropped and the session was not resumed");
    for (const item of this._unacked.splice(0)) this._settle(item, lost);
    const rejoined = [];
    const failed = [];
    for (const key of this._rooms.list()) {
      const name = JSON.stringify(key.room) + (key.ns === "/" ? "" : ` (namespace ${key.ns})`);
      try {
        await sleep(conn.pacer === null ? 0 : conn.pacer.wait(now()));
        if (conn !== this._conn) return;
        this._rooms.rejoined(key, await this._callOn(conn, "room.join", key));
        rejoined.push(key);
      } catch (error) {
        if (conn !== this._conn || error instanceof ConnectionLost) return;
        if (error instanceof AckError && !TRANSIENT_REJOIN_ERRORS.has(error.code)) {
          console.warn(`roomd: cannot re-join ${name}: ${error.message}`);
          this._rooms.discard(key);
          failed.push(key);
          continue;
        }
        const transient = error instanceof AckError;
        const reason = transient
          ? `re-join of ${name} refused for now: ${error.code}`
          : `no answer to the re-join of ${name} within ${this.callTimeout} s`;
        const code = transient ? CloseCode.TRY_AGAIN_LATER : CloseCode.HANDSHAKE_TIMEOUT;
        this._drop(conn, { code, reason, local: true });
        return;
      }
    }
    if (conn !== this._conn) return;
    this._ready(conn, { rejoined, rejoinFailed: failed, resent: 0 });
  }

  /** Re-joined or resumed: the queue goes next, then the client is open. */
  _ready(conn, { rejoined, rejoinFailed, resent }) {
    conn.rejoined = rejoined;
    conn.rejoinFailed = rejoinFailed;
    conn.resent = resent;
    conn.flushed = this._queue.length;
    conn.ready = true;
    this._pump();
  }

  /** A call on `conn` now, bypassing the queue (used while re-joining). */
  _callOn(conn, event, data) {
    return new Promise((resolve, reject) => {
      const item = this._outgoing(event, data);
      item.internal = true;
      item.waiter = { resolve, reject };
      item.timer = setTimeout(() => {
        this._abandon(item);
        reject(new RequestTimeout(`no ack for ${JSON.stringify(event)}`));
      }, this.callTimeout * 1000);
      this._send(conn, item);
    });
  }

  _becomeOpen(conn) {
    conn.opened = true;
    const welcome = conn.welcome;
    const reconnect = this._openedOnce;
    this._openedOnce = true;
    if (reconnect) this.reconnects += 1;
    this._attempt = 0;
    this._setState(State.OPEN);
    const opened = {
      session: welcome.session,
      node: welcome.node,
      user: welcome.user,
      url: conn.url,
      resumed: welcome.resumed,
      reconnect,
      rejoined: conn.rejoined,
      rejoinFailed: conn.rejoinFailed,
      flushed: conn.flushed,
      replayed: welcome.replayed ?? 0,
      resent: conn.resent,
      reason: welcome.reason ?? null,
      gaps: (welcome.gaps ?? []).map((gap) => ({
        ns: gap.ns ?? DEFAULT_NAMESPACE,
        room: gap.room,
      })),
      inboxGap: welcome.inboxGap ?? false,
    };
    this._publish(Lifecycle.OPEN, opened);
    const started = this._opened;
    if (started !== null && !started.done) {
      started.done = true;
      started.resolve(opened);
    }
  }

  _onAck(frame) {
    const item = this._pending.get(frame.id);
    if (item === undefined) return;
    if (frame.error) this._settle(item, new AckError(frame.error.code, frame.error.message));
    else this._settle(item, null, frame.result ?? null);
  }

  _onError(frame) {
    const item =
      frame.ref !== undefined && frame.ref !== null ? this._pending.get(frame.ref) : undefined;
    if (item !== undefined) this._settle(item, new AckError(frame.code, frame.message));
    else this._problem(frame);
  }

  _problem({ code, message }) {
    this._publish(Lifecycle.ERROR, { code: String(code), message: String(message) });
  }

  _onPush(frame) {
    if (Number.isInteger(frame.seq)) this._lastSeq = frame.seq;
    const at = streamPosition(frame);
    if (at !== null) {
      const room = roomKey(frame.room);
      if (room !== null) this._rooms.saw(room, at);
      else this._inbox = at;
    }
    const push = {
      event: frame.event,
      data: frame.data ?? null,
      seq: frame.seq ?? null,
      room: frame.room ?? null,
      from: frame.from ?? null,
      to: frame.to ?? null,
      epoch: at?.epoch ?? null,
      offset: at?.offset ?? null,
    };
    this._publish(push.event, push);
    this._publish(ANY_PUSH, push);
  }

  async _onRequest(conn, request) {
    const answer = (body) => {
      try {
        this._sendNow(conn, { type: "ack", id: request.id, ...body });
      } catch {
        const error = { code: "internal", message: "internal error" };
        this._sendNow(conn, { type: "ack", id: request.id, error });
        console.error(
          `roomd: the answer to request ${JSON.stringify(request.event)} has no JSON form`,
        );
      }
    };
    const handler = this._requestHandlers.get(request.event);
    if (handler === undefined) {
      const message = `no handler for request ${JSON.stringify(request.event)}`;
      answer({ error: { code: "unknown_event", message } });
      return;
    }
    if (conn.requests >= MAX_CONCURRENT_REQUESTS) {
      answer({
        error: { code: "rate_limited", message: "client busy: too many requests at once" },
      });
      return;
    }
    conn.requests += 1;
    const timeout = (typeof request.timeout === "number" ? request.timeout : 10) * 1000;
    let timer;
    const late = new Promise((resolve) => {
      timer = setTimeout(() => resolve(LATE), timeout);
    });
    try {
      const result = await Promise.race([
        Promise.resolve().then(() => handler(request.data ?? null, request)),
        late,
      ]);
      if (result !== LATE) answer(result === undefined || result === null ? {} : { result });
    } catch (error) {
      if (error instanceof RoomdError) {
        answer({ error: { code: String(error.code), message: String(error.message) } });
      } else {
        console.error(`roomd: request handler for ${JSON.stringify(request.event)} failed`, error);
        answer({ error: { code: "internal", message: "internal error" } });
      }
    } finally {
      clearTimeout(timer);
      conn.requests -= 1;
    }
  }

  // Heartbeat ----------------------------------------------------------------------------------

  _startHeartbeat(conn) {
    let interval = this.heartbeatInterval;
    const timeout = conn.welcome.heartbeat?.timeout;
    if (typeof timeout === "number" && timeout > 0) interval = Math.min(interval, timeout / 2);
    conn.beat = () => {
      conn.heartbeatTimer = setTimeout(() => this._ping(conn), interval * 1000);
    };
    conn.beat();
  }

  _onPong(conn, pong) {
    if (conn.pingTs === null || pong.ts !== conn.pingTs) return;
    conn.pingTs = null;
    clearTimeout(conn.pongTimer);
    const sample = Math.max(0, wallClock() - pong.ts);
    const rtt = this.rtt;
    rtt.latest = sample;
    rtt.samples += 1;
    rtt.smoothed =
      rtt.smoothed === null ? sample : rtt.smoothed + RTT_GAIN * (sample - rtt.smoothed);
    this._publish(Lifecycle.PONG, { rtt: sample, smoothed: rtt.smoothed, serverTs: pong.serverTs });
    conn.beat?.();
  }

  /** Send a ping now (the next heartbeat is scheduled from its pong); false when not open. */
  ping() {
    const conn = this._conn;
    if (conn === null || conn.welcome === null || conn.pingTs !== null) return false;
    clearTimeout(conn.heartbeatTimer);
    return this._ping(conn);
  }

  /** Ping on `conn`; no pong within heartbeatTimeout means the connection is dead. */
  _ping(conn) {
    conn.pingTs = wallClock();
    if (!this._sendNow(conn, { type: "ping", ts: conn.pingTs })) return false;
    conn.pongTimer = setTimeout(() => {
      const reason = `no pong within ${this.heartbeatTimeout} s`;
      this._drop(conn, { code: CloseCode.HEARTBEAT_TIMEOUT, reason, local: true });
    }, this.heartbeatTimeout * 1000);
    return true;
  }

  // Closing and reconnecting -------------------------------------------------------------------

  /**
   * Drop `conn` now for the client's own reason (no close handshake with a silent peer). A
   * verdict that reconnects closes with its code (or none, where a browser may not send it), so
   * that the node keeps the session for a resume; a terminal one ends the session (1000).
   */
  _drop(conn, verdict) {
    if (conn.verdict === null) conn.verdict = verdict;
    const code = shouldReconnect(verdict.code) ? verdict.code : CloseCode.NORMAL;
    safeClose(conn.ws, code, verdict.reason);
    this._dropped(conn, verdict);
  }

  /** The node asks the client to resume its session elsewhere now (it is draining). */
  _onReconnect(conn, frame) {
    if (!isClientUrl(frame.url)) {
      const message = `a reconnect frame without a usable url: ${JSON.stringify(frame.url)}`;
      this._problem({ code: "bad_frame", message });
      return;
    }
    const alternates = Array.isArray(frame.alternates) ? frame.alternates : [];
    for (const url of [frame.url, ...alternates]) {
      if (isClientUrl(url) && !this._urls.includes(url)) this._urls.push(url);
    }
    this._moveTo = frame.url;
    const reason = `${frame.node} asks to resume at ${frame.url} (${frame.reason ?? "draining"})`;
    this._drop(conn, { code: CloseCode.GOING_AWAY, reason, local: true });
  }

  /** `conn` is gone (closed by the node, lost, or dropped by the client). */
  _dropped(conn, closed) {
    if (conn.done) return;
    conn.done = true;
    for (const timer of [
      "connectTimer",
      "heartbeatTimer",
      "pongTimer",
      "pumpTimer",
      "closeTimer",
    ]) {
      clearTimeout(conn[timer]);
    }
    conn.ws.onopen = conn.ws.onmessage = conn.ws.onclose = conn.ws.onerror = null;
    if (this._conn === conn) this._conn = null;
    const verdict = conn.verdict ?? closed;
    const lost = new ConnectionLost(`connection closed (${verdict.code} ${verdict.reason})`);
    const unacked = [];
    for (const item of [...this._pending.values()]) {
      if (this.resume && !this._closing && !item.internal && shouldReconnect(verdict.code)) {
        // Sent, not acknowledged: sent again (same cmid) if the next connection resumes.
        this._pending.delete(item.callId);
        item.callId = null;
        unacked.push(item);
      } else {
        this._settle(item, lost);
      }
    }
    this._unacked.unshift(...unacked);
    for (const item of this._queue) {
      if (!item.offline) {
        item.offline = true; // it waited for its turn: now it waits for the next connection
        item.accepted?.();
      }
    }
    this._afterClose(conn.opened, verdict);
  }

  _afterClose(opened, closed) {
    if (opened) this._attempt = 0;
    this.closeCode = closed.code;
    this.closeReason = closed.reason;
    const local = closed.local ?? false;
    if (this._closing) {
      this._publish(Lifecycle.CLOSE, {
        code: closed.code,
        reason: closed.reason,
        reconnect: false,
        local,
      });
      this._finish();
      return;
    }
    const decision = decide(closed.code, this._attempt + 1, this.backoff, this._random);
    this._publish(Lifecycle.CLOSE, {
      code: closed.code,
      reason: closed.reason,
      reconnect: decision.reconnect,
      local,
    });
    if (!decision.reconnect) {
      if (decision.gaveUp) {
        const limit = { attempts: this._attempt, code: closed.code, reason: closed.reason };
        this._publish(Lifecycle.REPEAT_LIMIT, limit);
      }
      this._failStart(
        new ConnectFailed(
          `cannot connect to ${this._lastUrl ?? this._urls[0]}: ${decision.reason}: ${closed.code} ${closed.reason}`,
          closed.code,
          closed.reason,
        ),
      );
      this._finish();
      return;
    }
    let { attempt, delay } = decision;
    let next = this._urls.length > 1 ? null : this._urls[0];
    if (this._moveTo !== null) [attempt, delay, next] = [0, 0, this._moveTo]; // go now
    this._attempt = attempt;
    this._setState(State.RECONNECTING);
    this._publish(Lifecycle.RECONNECTING, { attempt, delay, url: next });
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._connectNext();
    }, delay * 1000);
  }

  _finish() {
    if (this._state === State.CLOSED) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const error = this._closedError();
    this._failStart(error);
    for (const item of [...this._pending.values(), ...this._unacked.splice(0)]) {
      this._settle(item, error);
    }
    const queued = this._queue.splice(0);
    for (const item of queued) {
      clearTimeout(item.timer);
      if (item.waiter !== null) item.waiter.reject(error);
      else this._emitFailed(item, error);
    }
    this._setState(State.CLOSED);
  }
}

function closedByPeer(event) {
  const code = typeof event?.code === "number" ? event.code : CloseCode.ABNORMAL;
  let reason = event?.reason || "";
  if (!reason)
    reason = code === CloseCode.ABNORMAL ? "connection lost" : (CLOSE_CODES[code]?.reason ?? "");
  return { code, reason, local: code === CloseCode.ABNORMAL };
}

/**
 * Close a WebSocket with `code` if browsers may send it (1000 or 3000-4999), else without a code
 * (the node sees 1005, "no status", which like 1006 leaves the session resumable). Never throws.
 */
function safeClose(ws, code, reason) {
  const allowed = code === 1000 || (code >= 3000 && code <= 4999);
  let text = String(reason ?? "");
  while (new TextEncoder().encode(text).length > MAX_CLOSE_REASON_BYTES) text = text.slice(0, -1);
  try {
    if (ws.readyState === 0 || ws.readyState === 1) {
      if (allowed) ws.close(code, text);
      else ws.close();
    }
  } catch {
    // already closing
  }
}

function isClientUrl(url) {
  if (typeof url !== "string") return false;
  try {
    clientUrl(url);
    return true;
  } catch {
    return false;
  }
}
