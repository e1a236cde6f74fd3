// One server of the chat app: its RoomdClient and what the app knows of it (conversations,
// members, users online, typing, connection state). It renders nothing: `onChange` tells the
// view to draw again.
//
// Every message is shown once, in its stream's order: messages are known by their id and placed
// by their offset in the room's stream (or the user's inbox), so that a room's history, the
// replay of a resumed session and a resynchronisation after a gap can overlap live pushes.

import { AckError, Lifecycle, RoomdClient, fetchHealth, httpUrl } from "/roomd.js";

export const MAX_MESSAGES = 500; // kept per conversation
const TYPING_SHOWN_MS = 6000; // a typing notice without news expires
const POLL_MS = 10000; // /health and the room directory, while online
const SEND_TIMEOUT = 30; // seconds: a message may wait that long in the offline queue
const HEALTH_TIMEOUT_MS = 3000;
export const HISTORY = 50; // messages fetched when a room is joined or resynchronised
const RESUME_NOTE_MS = 15000; // how long the connection line tells how the last reconnect went

export const roomKey = (ns, room) => `room:${JSON.stringify([ns, room])}`;
export const dmKey = (user) => `dm:${user}`;

/** `host:port` of a URL: a server's id. */
export function serverId(url) {
  const parsed = new URL(url);
  const secure = parsed.protocol === "wss:" || parsed.protocol === "https:";
  return `${parsed.hostname}:${parsed.port || (secure ? 443 : 80)}`;
}

export class Server {
  /**
   * `urls`: the node's WebSocket URL first, then the other nodes of its cluster (failover).
   * `auth`: `{user}` on development nodes, or `{token}`.
   */
  constructor({ urls, auth, onChange }) {
    this.id = serverId(urls[0]);
    this.urls = urls;
    this.auth = auth;
    this.onChange = onChange;
    this.client = new RoomdClient(urls, {
      user: auth.user ?? null,
      token: auth.token ?? null,
      preferLeastLoaded: false, // the page's own node first; the others on failover
      backoff: { base: 0.5, maxDelay: 10 },
      heartbeatInterval: 5,
    });
    this.status = "connecting"; // connecting | online | offline | error
    this.name = this.id; // the node's name, once known
    this.users = null; // users on the node (its /health)
    this.lastError = null;
    this.reconnect = null; // {attempt, at}: the next attempt, while offline
    this.conversations = new Map();
    this.online = []; // users online in the cluster, sorted and unique
    this.statuses = new Map(); // user -> {status, text}
    this.directory = []; // [{ns, room, members}] from cluster.stats
    this.active = null; // the key of the conversation shown
    this.myStatus = { status: "online", text: null };
    this.resumeNote = null; // {text, short, until}: how the last reconnect went
    this._timers = [];
    this._wire();
  }

  get me() {
    return this.client.welcome?.user ?? this.auth.user ?? null;
  }

  get rtt() {
    return this.client.rtt.smoothed;
  }

  /** Connect; resolves when open, rejects with the first connection's failure. */
  async start() {
    const opened = this.client.connect();
    this._timers.push(setInterval(() => this._poll(), POLL_MS));
    this._timers.push(setInterval(() => this._expireTyping(), 1000));
    await opened;
    this._poll();
  }

  stop() {
    for (const timer of this._timers) clearInterval(timer);
    return this.client.close();
  }

  _wire() {
    const c = this.client;
    c.on(Lifecycle.STATE, ({ state }) => {
      if (state === "open") this._set({ status: "online", lastError: null, reconnect: null });
      else if (state === "closed") this._set({ status: "error" });
      else if (this.status === "online") this._set({ status: "offline" });
    });
    c.on(Lifecycle.RECONNECTING, ({ attempt, delay }) => {
      this._set({ status: "offline", reconnect: { attempt, at: Date.now() + delay * 1000 } });
    });
    c.on(Lifecycle.CLOSE, ({ code, reason, reconnect }) => {
      this.lastError = reconnect ? `connection lost (${code})` : `closed: ${reason || code}`;
      this.changed();
    });
    c.on(Lifecycle.OPEN, (opened) => this._onOpen(opened));
    c.on(Lifecycle.PONG, () => this.changed());
    c.on(Lifecycle.EMIT_FAILED, ({ event, message }) => {
      this.lastError = `${event} not sent: ${message}`;
      this.changed();
    });
    c.on("message", (push) => this._onMessage(push));
    c.on("users.online", (push) => this._setOnline(push.data?.users));
    c.on("room.joined", (push) => this._onMembership(push.data, true));
    c.on("room.left", (push) => this._onMembership(push.data, false));
    c.on("status", (push) => this._onStatus(push.data));
    c.on("typing", (push) => this._onTyping(push.data));
  }

  _set(fields) {
    Object.assign(this, fields);
    this.changed();
  }

  changed() {
    this.onChange(this);
  }

  // Conversations ------------------------------------------------------------------------------

  conversation(key) {
    return this.conversations.get(key) ?? null;
  }

  _room(ns, room) {
    const key = roomKey(ns, room);
    let conv = this.conversations.get(key);
    if (conv === undefined) {
      conv = newConversation({ key, kind: "room", ns, room, title: `# ${room}` });
      this.conversations.set(key, conv);
    }
    return conv;
  }

  dm(user) {
    const key = dmKey(user);
    let conv = this.conversations.get(key);
    if (conv === undefined) {
      conv = newConversation({ key, kind: "dm", peer: user, title: `@ ${user}` });
      this.conversations.set(key, conv);
    }
    return conv;
  }

  open(key) {
    this.active = key;
    const conv = this.conversations.get(key);
    if (conv) conv.unread = 0;
    this.changed();
  }

  async join(room, ns = "/") {
    const result = await this.client.join(room, ns);
    const conv = this._room(result.ns, result.room);
    for (const user of result.members) if (!conv.members.has(user)) conv.members.set(user, null);
    this.open(conv.key);
    await Promise.all([this._history(conv), this._members(conv)]);
    this._refreshDirectory();
  }

  /** The room's last messages, merged with what is shown (each once, in the room's order). */
  async _history(conv) {
    try {
      const history = await this.client.history(conv.room, { ns: conv.ns, limit: HISTORY });
      for (const push of history.messages) {
        if (push.event === "message") this._showMessage(conv, push.data, push.offset);
      }
      this.changed();
    } catch (error) {
      if (!(error instanceof AckError)) return; // offline: resynchronised on the next open
      this.lastError = `#${conv.room}: no history (${error.message})`;
      this.changed();
    }
  }

  async leave(conv) {
    await this.client.leave(conv.room, conv.ns);
    this._forgetRoom(conv.ns, conv.room);
    this._refreshDirectory();
  }

  _forgetRoom(ns, room, why = null) {
    const key = roomKey(ns, room);
    this.conversations.delete(key);
    if (this.active === key) this.active = null;
    if (why) this.lastError = `#${room}: ${why}`;
    this.changed();
  }

  async _members(conv) {
    try {
      const members = await this.client.members(conv.room, conv.ns);
      conv.members = new Map(members.map((m) => [m.user, m]));
      for (const m of members) {
        const known = this.statuses.get(m.user);
        this.statuses.set(m.user, {
          status: m.status,
          text: known?.status === m.status ? known.text : null,
        });
      }
      this.changed();
    } catch (error) {
      if (!(error instanceof AckError)) return; // offline: refreshed on the next open
      this._forgetRoom(conv.ns, conv.room, error.message);
    }
  }

  // Sending ------------------------------------------------------------------------------------

  /**
   * Send `message` to a conversation; it shows at once as pending. Rejects with the node's
   * error (its validation message) after taking the pending message away.
   */
  async send(conv, message) {
    // The id is the client's (the protocol allows it): the push and the ack name the same one.
    const messageId = uuid4();
    message = { ...message, messageId };
    const pending = {
      id: messageId,
      messageId,
      sender: this.me,
      timestamp: Date.now(),
      type: message.type,
      payload: message.payload,
      offset: null, // in the room's stream, once numbered
      state: this.client.connected ? "sending" : "queued",
    };
    placeMessage(conv, pending);
    this.changed();
    const to = conv.kind === "room" ? { room: conv.room, ns: conv.ns } : { user: conv.peer };
    try {
      const ack = await this.client.call("send", { to, data: message }, { timeout: SEND_TIMEOUT });
      if (pending.state !== "delivered") pending.state = "sent"; // (its push may come first)
      if (Number.isInteger(ack?.offset)) this._showMessage(conv, pending, ack.offset);
    } catch (error) {
      removeMessage(conv, pending.id);
      throw error;
    } finally {
      this.changed();
    }
  }

  typing(conv, typing) {
    if (conv.kind !== "room" || !this.client.connected) return;
    this.client.typing(conv.room, typing, conv.ns).catch(() => {});
  }

  async setStatus(status, text) {
    await this.client.setStatus(status, text || null);
    this.myStatus = { status, text: text || null };
    this.changed();
  }

  // Pushes -------------------------------------------------------------------------------------

  _onMessage(push) {
    const message = push.data;
    if (!message || typeof message !== "object") return;
    let conv;
    if (push.room) {
      conv = this._room(push.room.ns, push.room.room);
    } else {
      const me = this.me;
      const peer = push.from === me ? ((push.to ?? []).find((u) => u !== me) ?? me) : push.from;
      if (!peer) return;
      conv = this.dm(peer);
    }
    if (this._showMessage(conv, message, push.offset)) {
      conv.typing.delete(message.sender);
      if (this.active !== conv.key && message.sender !== this.me) conv.unread += 1;
    }
    this.changed();
  }

  /** Show `message` in `conv` once; whether it is new there. */
  _showMessage(conv, message, offset) {
    const known = conv.messages.find((m) => m.messageId === message.messageId);
    if (known !== undefined) {
      if (known !== message) known.state = "delivered"; // e.g. the push of one sent from here
      if (known.offset === null && offset !== null) {
        known.offset = offset;
        removeMessage(conv, known.id);
        placeMessage(conv, known); // where the stream put it
      }
      return false;
    }
    placeMessage(conv, { ...message, id: message.messageId, offset, state: "delivered" });
    return true;
  }

  _onMembership(data, joined) {
    const conv = this.conversations.get(roomKey(data.ns, data.room));
    if (conv !== undefined) {
      if (joined) conv.members.set(data.user, conv.members.get(data.user) ?? null);
      else conv.members.delete(data.user);
      placeMessage(conv, {
        id: `notice-${Date.now()}-${Math.random()}`,
        type: "notice",
        timestamp: Date.now(),
        offset: null,
        text: `${data.user} ${joined ? "joined" : "left"}`,
      });
      if (joined) this._members(conv);
      this.changed();
    }
  }

  _onStatus(data) {
    this.statuses.set(data.user, { status: data.status, text: data.text ?? null });
    if (data.user === this.me) this.myStatus = { status: data.status, text: data.text ?? null };
    this.changed();
  }

  _setOnline(users) {
    if (!Array.isArray(users)) return;
    this.online = [...new Set(users)].sort();
    this.changed();
  }

  _onTyping(data) {
    const conv = this.conversations.get(roomKey(data.ns, data.room));
    if (conv === undefined) return;
    if (data.typing) conv.typing.set(data.user, Date.now() + TYPING_SHOWN_MS);
    else conv.typing.delete(data.user);
    this.changed();
  }

  _expireTyping() {
    const now = Date.now();
    let changed = false;
    for (const conv of this.conversations.values()) {
      for (const [user, until] of conv.typing) {
        if (until < now) changed = conv.typing.delete(user) || changed;
      }
    }
    if (this.resumeNote !== null && this.resumeNote.until < now) {
      this.resumeNote = null;
      changed = true;
    }
    if (changed || this.status === "offline") this.changed(); // the reconnect countdown too
  }

  // Refreshing ---------------------------------------------------------------------------------

  /**
   * A connection opened. A resumed session got what it missed from the node; a new one (the
   * resume was refused or not offered) and the rooms with a gap are resynchronised from the
   * rooms' history. The online list is subscribed to again (a session that moved to another
   * node left its subscription behind).
   */
  _onOpen(opened) {
    this.name = opened.node;
    this.client.ping(); // a round trip time at once, not at the first heartbeat
    for (const key of opened.rejoinFailed) this._forgetRoom(key.ns, key.room, "could not re-join");
    const rooms = [...this.conversations.values()].filter((c) => c.kind === "room");
    const stale = opened.resumed
      ? rooms.filter((c) => opened.gaps.some((g) => g.ns === c.ns && g.room === c.room))
      : rooms;
    if (opened.reconnect) this._noteReconnect(opened, stale);
    for (const conv of stale) this._history(conv);
    for (const conv of rooms) this._members(conv);
    this.client.subscribeUsers().then(
      (users) => this._setOnline(users),
      () => {}, // offline again: subscribed on the next open
    );
    if (this.myStatus.status !== "online" || this.myStatus.text) {
      // A new session starts online, and a resumed one may have lost its node's presence:
      // carry the status the user chose over.
      this.client.setStatus(this.myStatus.status, this.myStatus.text).catch(() => {});
    }
    this._poll();
  }

  _noteReconnect(opened, stale) {
    const parts = [];
    let short;
    if (opened.resumed) {
      const n = opened.replayed;
      parts.push(`resumed, ${n} message${n === 1 ? "" : "s"} replayed`);
      short = `resumed · ${n}`;
      if (opened.resent > 0) parts.push(`${opened.resent} sent again`);
    } else {
      parts.push(`new session${opened.reason ? ` (${opened.reason.replaceAll("_", " ")})` : ""}`);
      short = "new session";
    }
    if (stale.length > 0) parts.push(`resynchronised ${stale.map((c) => `#${c.room}`).join(", ")}`);
    if (opened.inboxGap || (!opened.resumed && this._hasDms())) {
      parts.push("direct messages sent meanwhile may be missing");
    }
    this.resumeNote = { text: parts.join(" · "), short, until: Date.now() + RESUME_NOTE_MS };
  }

  _hasDms() {
    return [...this.conversations.values()].some((c) => c.kind === "dm");
  }

  async _refreshDirectory() {
    try {
      const stats = await this.client.call("cluster.stats", {});
      this.directory = Array.isArray(stats.rooms) ? stats.rooms : [];
      this.changed();
    } catch {
      // offline, or a node without cluster.stats
    }
  }

  async _poll() {
    if (!this.client.connected) return;
    this._refreshDirectory();
    try {
      const health = await fetchHealth(this.client.url, { timeout: 3 });
      this._set({ users: health.users, name: health.name });
    } catch {
      // its /health is not reachable from this page: keep the last figures
    }
  }
}

/** A random UUID (version 4); crypto.randomUUID needs a secure context, this does not. */
function uuid4() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function newConversation(fields) {
  return { messages: [], unread: 0, members: new Map(), typing: new Map(), ...fields };
}

/**
 * Put `message` in its place: after every message of its stream with a smaller offset, before
 * those with a larger one and those still being sent, and before notices that came later (a
 * message without an offset, such as a direct message sent from this page, stays where it was
 * put). Without an offset it goes last.
 */
export function placeMessage(conv, message) {
  const list = conv.messages;
  let index = list.length;
  if (message.offset !== null && message.offset !== undefined) {
    while (index > 0 && comesAfter(list[index - 1], message)) index -= 1;
  }
  list.splice(index, 0, message);
  if (list.length > MAX_MESSAGES) list.splice(0, list.length - MAX_MESSAGES);
}

function comesAfter(shown, message) {
  if (shown.offset !== null && shown.offset !== undefined) return shown.offset > message.offset;
  if (shown.type === "notice") return shown.timestamp > message.timestamp;
  return shown.state === "sending" || shown.state === "queued"; // ours, not numbered yet
}

function removeMessage(conv, id) {
  const index = conv.messages.findIndex((m) => m.id === id);
  if (index >= 0) conv.messages.splice(index, 1);
}

/**
 * The WebSocket URLs of a node and of the other nodes of its cluster (from its /health), the
 * node itself first: the failover list of a server.
 */
export async function clusterUrls(url) {
  const urls = [url];
  try {
    const answer = await fetch(httpUrl(url, "/health"), {
      cache: "no-store",
      signal: AbortSignal.timeout(HEALTH_TIMEOUT_MS),
    });
    const health = await answer.json();
    for (const node of health?.cluster?.nodes ?? []) {
      if (typeof node.url === "string" && node.status === "up" && node.name !== health.name) {
        urls.push(node.url);
      }
    }
  } catch {
    // a single node, or no /health: no failover
  }
  return urls;
}
