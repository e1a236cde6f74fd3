// The chat app: sign-in, the servers it is connected to, and the user's actions. State lives in
// the Server objects (server.js); view.js draws it.

import { InvalidServer, clientUrl, fetchHealth } from "/roomd.js";
import { Server, clusterUrls, serverId } from "/app/server.js";
import {
  connectionText,
  renderConversations,
  renderDirectory,
  renderMessages,
  renderPeople,
  renderServers,
  typingText,
} from "/app/view.js";

const $ = (id) => document.getElementById(id);
const TYPING_REPEAT_MS = 3000; // "still typing" at most this often
const TYPING_IDLE_MS = 4000; // no key for this long: stopped typing
const SESSION_KEY = "roomd.signin";
const NAME_RULE = /^[^\u0000-\u001f\u007f]{1,128}$/; // a roomd name (docs/protocol.md, Names)

const servers = new Map(); // id -> Server, in the order added
let activeId = null;
let auth = null; // {user} or {token}
let drawScheduled = false;
let kind = "text"; // the composer's message type
let typingSentAt = 0;
let typingTimer = null;

const homeUrl = clientUrl(`${location.protocol}//${location.host}/ws`);

function active() {
  return activeId === null ? null : (servers.get(activeId) ?? null);
}

function activeConversation() {
  const server = active();
  return server?.active ? server.conversation(server.active) : null;
}

// Drawing -----------------------------------------------------------------------------------------

function draw() {
  if (drawScheduled) return;
  drawScheduled = true;
  requestAnimationFrame(() => {
    drawScheduled = false;
    drawNow();
  });
}

function drawNow() {
  const server = active();
  renderServers($("servers"), servers, activeId, switchTo);
  if (server === null) return;
  const conv = activeConversation();
  $("server-name").textContent = server.name;
  const users =
    server.users === null ? "" : ` · ${server.users} user${server.users === 1 ? "" : "s"} here`;
  $("server-meta").textContent = `${server.id}${users}`;
  const conn = connectionText(server);
  $("conn").className = `conn ${conn.cls}`;
  $("conn").title = conn.text;
  $("conn-long").textContent = conn.text;
  $("conn-short").textContent = conn.short;
  $("me-name").textContent = server.me ?? "";
  $("me-dot").className =
    `dot ${server.myStatus.status === "online" || server.myStatus.status === "away" ? server.myStatus.status : "custom"}`;
  renderConversations($("rooms"), server, "room", openConversation);
  renderConversations($("dms"), server, "dm", openConversation);
  renderDirectory($("directory"), server, joinRoom);
  $("chat-title").textContent = conv ? conv.title : "Pick a room";
  $("chat-sub").textContent =
    conv?.kind === "room"
      ? `${conv.members.size} member${conv.members.size === 1 ? "" : "s"}`
      : conv
        ? "direct message"
        : "";
  $("leave").hidden = conv?.kind !== "room";
  renderMessages($("messages"), conv, server.me);
  $("typing").textContent = typingText(conv);
  renderPeople($("members"), $("online"), server, conv, openDm);
  $("composer").classList.toggle("disabled", conv === null);
  $("send").disabled = conv === null;
}

// Servers -----------------------------------------------------------------------------------------

async function addServer(urls) {
  const server = new Server({ urls, auth, onChange: draw });
  servers.set(server.id, server);
  if (activeId === null) activeId = server.id;
  draw();
  try {
    await server.start();
  } catch (error) {
    servers.delete(server.id);
    if (activeId === server.id) activeId = servers.keys().next().value ?? null;
    draw();
    throw error;
  }
  return server;
}

function switchTo(id) {
  if (!servers.has(id)) return;
  activeId = id;
  setPanel(null);
  draw();
}

async function onAddServer(event) {
  event.preventDefault();
  const input = $("server-url");
  const error = $("server-error");
  error.textContent = "";
  let url;
  try {
    url = clientUrl(
      input.value.trim().includes("://") ? input.value.trim() : `ws://${input.value.trim()}`,
    );
  } catch (e) {
    error.textContent = e.message;
    return;
  }
  if (servers.has(serverId(url))) {
    error.textContent = "That server is already in the list.";
    return;
  }
  $("server-add").disabled = true;
  try {
    const health = await fetchHealth(url, { timeout: 5 });
    if (health.status !== "ok") throw new InvalidServer(url, `the node is ${health.status}`);
    const server = await addServer([url]);
    $("server-dialog").close();
    input.value = "";
    switchTo(server.id);
  } catch (e) {
    error.textContent = e instanceof InvalidServer ? e.problem : `could not connect: ${e.message}`;
  } finally {
    $("server-add").disabled = false;
  }
}

// Conversations -----------------------------------------------------------------------------------

function openConversation(key) {
  active()?.open(key);
  setPanel(null);
  $("composer-error").textContent = "";
}

function openDm(user) {
  const server = active();
  if (server === null || user === server.me) return;
  openConversation(server.dm(user).key);
}

async function joinRoom(room, ns = "/") {
  const error = $("join-error");
  error.textContent = "";
  try {
    await active().join(room, ns);
    setPanel(null);
  } catch (e) {
    error.textContent = e.message;
  }
}

function onJoin(event) {
  event.preventDefault();
  const input = $("join-room");
  const room = input.value.trim().replace(/^#\s*/, "");
  if (!room) {
    $("join-error").textContent = "Give the room a name.";
    return;
  }
  input.value = "";
  joinRoom(room);
}

async function onLeave() {
  const conv = activeConversation();
  if (conv?.kind !== "room") return;
  try {
    await active().leave(conv);
  } catch (e) {
    $("composer-error").textContent = e.message;
  }
}

// Composing ---------------------------------------------------------------------------------------

function setKind(next) {
  kind = next;
  for (const tab of document.querySelectorAll(".kinds [data-kind]")) {
    tab.setAttribute("aria-selected", String(tab.dataset.kind === kind));
  }
  for (const fields of document.querySelectorAll(".composer .fields")) {
    fields.hidden = fields.dataset.kind !== kind;
  }
  $("composer-error").textContent = "";
}

/** Numbers as the node expects them: integers, or the text as typed (the node says why not). */
function integer(id) {
  const text = $(id).value.trim();
  return /^-?\d+$/.test(text) ? Number(text) : text;
}

function composed() {
  if (kind === "image") {
    return {
      type: "image",
      payload: {
        url: $("image-url").value.trim(),
        width: integer("image-width"),
        height: integer("image-height"),
      },
    };
  }
  if (kind === "file") {
    const payload = {
      url: $("file-url").value.trim(),
      size: integer("file-size"),
      mimeType: $("file-mime").value.trim(),
    };
    const name = $("file-name").value.trim();
    if (name) payload.name = name;
    return { type: "file", payload };
  }
  return { type: "text", payload: { content: $("text").value } };
}

const FIELDS = {
  text: ["text"],
  image: ["image-url", "image-width", "image-height"],
  file: ["file-url", "file-size", "file-mime", "file-name"],
};

async function onSend(event) {
  event.preventDefault();
  const server = active();
  const conv = activeConversation();
  if (server === null || conv === null) return;
  const message = composed();
  if (message.type === "text" && message.payload.content.trim() === "") return;
  const saved = FIELDS[kind].map((id) => [id, $(id).value]);
  for (const [id] of saved) $(id).value = "";
  autosize();
  stopTyping(server, conv);
  $("composer-error").textContent = "";
  try {
    await server.send(conv, message);
  } catch (e) {
    for (const [id, value] of saved) if ($(id).value === "") $(id).value = value;
    autosize();
    $("composer-error").textContent =
      e.code === "invalid" ? `The node refused it: ${e.message}` : e.message;
  }
}

function onTextKey(event) {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
}

function onTextInput() {
  autosize();
  const server = active();
  const conv = activeConversation();
  if (server === null || conv === null) return;
  const now = Date.now();
  if (now - typingSentAt > TYPING_REPEAT_MS) {
    typingSentAt = now;
    server.typing(conv, true);
  }
  clearTimeout(typingTimer);
  typingTimer = setTimeout(() => stopTyping(server, conv), TYPING_IDLE_MS);
}

function stopTyping(server, conv) {
  clearTimeout(typingTimer);
  if (typingSentAt !== 0) server.typing(conv, false);
  typingSentAt = 0;
}

function autosize() {
  const text = $("text");
  text.style.height = "auto";
  text.style.height = `${Math.min(text.scrollHeight, 160)}px`;
}

// Status ------------------------------------------------------------------------------------------

async function onStatus() {
  const choice = $("status").value;
  const custom = choice === "custom";
  $("status-text").hidden = !custom;
  if (custom) {
    $("status-text").focus();
    return;
  }
  await applyStatus(choice, null);
}

async function applyStatus(status, text) {
  const results = await Promise.allSettled(
    [...servers.values()].map((s) => s.setStatus(status, text)),
  );
  const failed = results.find((r) => r.status === "rejected");
  $("composer-error").textContent = failed ? `Status not set: ${failed.reason.message}` : "";
}

function onStatusText(event) {
  if (event.key !== "Enter") return;
  event.preventDefault();
  const text = $("status-text").value.trim();
  if (text) applyStatus(text, null);
}

// Panels (phone and narrow windows) -------------------------------------------------------------

function setPanel(name) {
  document.body.dataset.panel = name ?? "";
}

// Sign-in -----------------------------------------------------------------------------------------

async function describeHome() {
  try {
    const health = await fetchHealth(homeUrl, { timeout: 5 });
    $("signin-node").textContent =
      `${health.name} · roomd ${health.version} · ${health.users} user${health.users === 1 ? "" : "s"} here`;
  } catch (e) {
    $("signin-node").textContent = e instanceof InvalidServer ? e.problem : String(e);
  }
}

async function signIn(credentials) {
  const error = $("signin-error");
  error.textContent = "";
  if (credentials.user !== undefined && !NAME_RULE.test(credentials.user)) {
    error.textContent = "A name is 1 to 128 characters, without control characters.";
    return;
  }
  auth = credentials;
  $("signin-form").querySelector("button").disabled = true;
  const urls = await clusterUrls(homeUrl);
  const server = new Server({ urls, auth, onChange: draw });
  // A browser cannot see why an upgrade was refused: on the first connection, a refusal means
  // the node did not accept these credentials (its /health answered a moment ago).
  const refused = server.client.once("$close");
  try {
    servers.set(server.id, server);
    activeId = server.id;
    const opened = server.start();
    const first = await Promise.race([opened.then(() => null), refused]);
    if (first !== null)
      throw new Error("the node refused to sign you in: check the name or the token");
    await opened;
  } catch (e) {
    servers.clear();
    activeId = null;
    server.stop();
    error.textContent = e.message;
    $("signin-form").querySelector("button").disabled = false;
    return;
  }
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(credentials));
  $("signin").hidden = true;
  $("app").hidden = false;
  draw();
}

function onSignIn(event) {
  event.preventDefault();
  const token = $("signin-token").value.trim();
  signIn(token ? { token } : { user: $("signin-name").value.trim() });
}

async function signOut() {
  sessionStorage.removeItem(SESSION_KEY);
  await Promise.allSettled([...servers.values()].map((s) => s.stop()));
  location.reload();
}

// Start -------------------------------------------------------------------------------------------

function wire() {
  $("signin-form").addEventListener("submit", onSignIn);
  $("join-form").addEventListener("submit", onJoin);
  $("leave").addEventListener("click", onLeave);
  $("composer").addEventListener("submit", onSend);
  $("text").addEventListener("keydown", onTextKey);
  $("text").addEventListener("input", onTextInput);
  for (const tab of document.querySelectorAll(".kinds [data-kind]")) {
    tab.addEventListener("click", () => setKind(tab.dataset.kind));
  }
  $("status").addEventListener("change", onStatus);
  $("status-text").addEventListener("keydown", onStatusText);
  $("sign-out").addEventListener("click", signOut);
  $("add-server").addEventListener("click", () => {
    $("server-error").textContent = "";
    $("server-dialog").showModal();
  });
  $("server-cancel").addEventListener("click", () => $("server-dialog").close());
  $("server-form").addEventListener("submit", onAddServer);
  $("open-sidebar").addEventListener("click", () => setPanel("sidebar"));
  $("close-sidebar").addEventListener("click", () => setPanel(null));
  $("open-people").addEventListener("click", () => setPanel("people"));
  $("close-people").addEventListener("click", () => setPanel(null));
  $("scrim").addEventListener("click", () => setPanel(null));
  // Back online: reconnect now rather than at the end of the backoff delay.
  window.addEventListener("online", () => {
    for (const server of servers.values()) server.client.reconnectNow();
  });
}

function start() {
  wire();
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  if (token) {
    // Signed in by the link: take the token out of the address bar (and the history).
    params.delete("token");
    history.replaceState(null, "", `${location.pathname}${params.size ? `?${params}` : ""}`);
  }
  $("signin").hidden = false;
  describeHome();
  const saved = token ? { token } : JSON.parse(sessionStorage.getItem(SESSION_KEY) ?? "null");
  if (saved) signIn(saved);
}

start();
