// One server of the chat app: its RoomdClient and what the app knows of it (conversations,
// members, users online, typing, connection state). It renders nothing: `onChange` tells the
// view to draw again.

import { AckError, Lifecycle, RoomdClient, fetchHealth, httpUrl } from "/roomd.js";

export const MAX_MESSAGES = 500; // kept per conversation
const TYPING_SHOWN_MS = 6000; // a typing notice without news expires
const POLL_MS = 10000; // /health and the room directory, while online
const ONLINE_REFRESH_MS = 250; // presence pushes come in bursts: one users.online per burst
const SEND_TIMEOUT = 30; // seconds: a message may wait that long in the offline queue
const HEALTH_TIMEOUT_MS = 3000;

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
    this._timers = [];
    this._onlineTimer = null;
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
    clearTimeout(this._onlineTimer);
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
    c.on(Lifecycle.OPEN, (opened) => {
      this.name = opened.node;
      this.client.ping(); // a round trip time at once, not at the first heartbeat
      for (const key of opened.rejoinFailed)
        this._forgetRoom(key.ns, key.room, "could not re-join");
      this._refreshAfterOpen();
    });
    c.on(Lifecycle.PONG, () => this.changed());
    c.on(Lifecycle.EMIT_FAILED, ({ event, message }) => {
      this.lastError = `${event} not sent: ${message}`;
      this.changed();
    });
    c.on("message", (push) => this._onMessage(push));
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
    await this._members(conv);
    this._refreshDirectory();
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
      state: this.client.connected ? "sending" : "queued",
    };
    addMessage(conv, pending);
    this.changed();
    const to = conv.kind === "room" ? { room: conv.room, ns: conv.ns } : { user: conv.peer };
    try {
      await this.client.call("send", { to, data: message }, { timeout: SEND_TIMEOUT });
      pending.state = "sent"; // the push of a room message may have settled it already
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
    const mine = conv.messages.find((m) => m.messageId === message.messageId);
    if (mine !== undefined) {
      mine.state = "delivered"; // the push of a message sent from this page
      this.changed();
      return;
    }
    addMessage(conv, { ...message, id: message.messageId, state: "delivered" });
    conv.typing.delete(message.sender);
    if (this.active !== conv.key && message.sender !== this.me) conv.unread += 1;
    this.changed();
  }

  _onMembership(data, joined) {
    const conv = this.conversations.get(roomKey(data.ns, data.room));
    if (conv !== undefined) {
      if (joined) conv.members.set(data.user, conv.members.get(data.user) ?? null);
      else conv.members.delete(data.user);
      addMessage(conv, {
        id: `notice-${Date.now()}-${Math.random()}`,
        type: "notice",
        timestamp: Date.now(),
        text: `${data.user} ${joined ? "joined" : "left"}`,
      });
      if (joined) this._members(conv);
    }
    this._refreshOnline();
  }

  _onStatus(data) {
    this.statuses.set(data.user, { status: data.status, text: data.text ?? null });
    if (data.user === this.me) this.myStatus = { status: data.status, text: data.text ?? null };
    this._refreshOnline();
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
    if (changed || this.status === "offline") this.changed(); // the reconnect countdown too
  }

  // Refreshing ---------------------------------------------------------------------------------

  _refreshAfterOpen() {
    this._refreshOnline();
    for (const conv of this.conversations.values()) {
      if (conv.kind === "room") this._members(conv);
    }
    if (this.myStatus.status !== "online" || this.myStatus.text) {
      // A new session starts online: carry the status the user chose over.
      this.client.setStatus(this.myStatus.status, this.myStatus.text).catch(() => {});
    }
    this._poll();
  }

  _refreshOnline() {
    clearTimeout(this._onlineTimer);
    this._onlineTimer = setTimeout(async () => {
      try {
        const users = await this.client.onlineUsers();
        this.online = [...new Set(users)].sort();
        this.changed();
      } catch {
        // offline: refreshed on the next open
      }
    }, ONLINE_REFRESH_MS);
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
    this._refreshOnline();
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

function addMessage(conv, message) {
  conv.messages.push(message);
  if (conv.messages.length > MAX_MESSAGES)
    conv.messages.splice(0, conv.messages.length - MAX_MESSAGES);
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
