// The operator view: the cluster as this node sees it (`cluster.stats`, the figures /health
// publishes), refreshed every second over a WebSocket. An operator signs in with a token that
// carries the claim "operator": true (`roomd token --operator --user NAME`); a development node
// lets anyone in.

import { Lifecycle, RoomdClient, clientUrl, fetchHealth } from "/roomd.js";
import {
  count,
  renderBus,
  renderCards,
  renderNodes,
  renderRooms,
  roomCount,
  sumOf,
  tokenClaims,
} from "/app/admin-view.js";

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 1000;
const KEEP = 60; // samples kept for the charts: a minute
const STORE = "roomd.operator";
const DEV_OPERATOR = "operator"; // the name a development node is asked to accept
const homeUrl = clientUrl(`${location.protocol}//${location.host}/ws`);

let client = null;
let timer = null;
let latest = null; // the last cluster.stats
let sampledAt = 0;
const samples = []; // [{t, up, connections, users, rooms, published, received}], oldest first
let rates = {};

// Signing in ---------------------------------------------------------------------------------------

/** Why `token` cannot open this view, or null. */
function refusal(token) {
  const claims = tokenClaims(token);
  if (claims === null) return "That is not a token (a JWT has three parts separated by dots).";
  if (claims.operator !== true) {
    return "This token is not an operator's: mint one with roomd token --operator --user NAME.";
  }
  if (typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) {
    return "This token has expired: mint a new one.";
  }
  return null;
}

async function open(auth) {
  const error = $("gate-error");
  error.textContent = "";
  if (auth.token !== undefined) {
    const why = refusal(auth.token);
    if (why !== null) {
      showGate(why);
      return false;
    }
  }
  const candidate = new RoomdClient(homeUrl, {
    user: auth.user ?? null,
    token: auth.token ?? null,
    backoff: { base: 0.5, maxDelay: 5 },
    heartbeatInterval: 5,
  });
  // A browser cannot see why an upgrade was refused: on the first connection, a refusal means
  // the node did not accept these credentials (its /health answered a moment ago).
  const refused = candidate.once(Lifecycle.CLOSE);
  const opened = candidate.connect();
  const first = await Promise.race([
    opened.then(
      () => null,
      () => "failed",
    ),
    refused,
  ]);
  if (first !== null) {
    candidate.close();
    if (auth.token === undefined) showGate("This node needs an operator token.");
    else showGate("The node refused this token (another node's secret, or expired?).");
    return false;
  }
  client = candidate;
  if (auth.token !== undefined) sessionStorage.setItem(STORE, auth.token);
  client.on(Lifecycle.STATE, drawLive);
  client.on(Lifecycle.PONG, drawLive);
  client.on(Lifecycle.OPEN, refresh);
  $("gate").hidden = true;
  $("dash").hidden = false;
  $("where").textContent = `${client.welcome.user} on ${client.node}`;
  await refresh();
  timer = setInterval(refresh, REFRESH_MS);
  return true;
}

function showGate(message) {
  $("dash").hidden = true;
  $("gate").hidden = false;
  $("gate-error").textContent = message;
}

function onGate(event) {
  event.preventDefault();
  const token = $("gate-token").value.trim();
  if (!token) {
    $("gate-error").textContent = "Paste an operator token.";
    return;
  }
  open({ token });
}

async function signOut() {
  sessionStorage.removeItem(STORE);
  clearInterval(timer);
  await client?.close();
  location.replace("/admin");
}

// Refreshing -----------------------------------------------------------------------------------------

async function refresh() {
  if (client === null || !client.connected) return;
  try {
    const stats = await client.call("cluster.stats", {}, { timeout: 5 });
    record(stats);
    latest = stats;
    draw();
  } catch {
    drawLive(); // offline: the line says so; the figures stay as they were
  }
}

function record(stats) {
  const now = performance.now() / 1000;
  const nodes = stats.nodes ?? [];
  const sample = {
    t: now,
    up: nodes.filter((n) => n.status === "up" || n.status === "draining").length,
    connections: sumOf(nodes, "connections"),
    users: stats.usersOnline ?? 0,
    rooms: roomCount(stats),
    published: stats.bus?.published,
    received: stats.bus?.received,
  };
  const previous = samples.at(-1);
  rates = {};
  if (previous !== undefined && sample.t > previous.t) {
    for (const key of ["published", "received"]) {
      if (Number.isFinite(sample[key]) && Number.isFinite(previous[key])) {
        rates[key] = Math.max(0, sample[key] - previous[key]) / (sample.t - previous.t);
      }
    }
  }
  samples.push(sample);
  if (samples.length > KEEP) samples.shift();
  sampledAt = Date.now();
}

// Drawing ----------------------------------------------------------------------------------------------

function draw() {
  if (latest === null) return;
  renderCards($("cards"), latest, samples);
  renderNodes($("nodes"), $("nodes-meta"), latest, client.node);
  renderBus($("bus"), $("bus-state"), latest, rates);
  renderRooms($("rooms"), $("rooms-meta"), latest, $("room-filter").value);
  drawLive();
}

function drawLive() {
  const live = $("live");
  if (client === null) return;
  if (client.connected) {
    const rtt = client.rtt.smoothed;
    const ms = rtt === null ? "" : ` · ${(rtt * 1000).toFixed(rtt < 0.01 ? 1 : 0)} ms`;
    live.textContent = `live${ms}`;
    live.className = "pill ok";
    live.title = sampledAt ? `updated ${new Date(sampledAt).toLocaleTimeString()}` : "";
  } else {
    live.textContent = client.state === "closed" ? "disconnected" : "reconnecting…";
    live.className = `pill ${client.state === "closed" ? "bad" : "warn"}`;
  }
}

// Start -----------------------------------------------------------------------------------------------

async function describeNode() {
  try {
    const health = await fetchHealth(homeUrl, { timeout: 5 });
    $("gate-node").textContent =
      `${health.name} · roomd ${health.version} · ${count(health.users)} user${health.users === 1 ? "" : "s"} here`;
  } catch (error) {
    $("gate-node").textContent = error.problem ?? String(error);
  }
}

function start() {
  $("gate-form").addEventListener("submit", onGate);
  $("sign-out").addEventListener("click", signOut);
  $("room-filter").addEventListener("input", draw);
  describeNode();
  const params = new URLSearchParams(location.search);
  const linked = params.get("token");
  if (linked) {
    // Opened by a link: take the token out of the address bar (and the history).
    params.delete("token");
    history.replaceState(null, "", `${location.pathname}${params.size ? `?${params}` : ""}`);
  }
  const token = linked ?? sessionStorage.getItem(STORE);
  open(token ? { token } : { user: DEV_OPERATOR });
}

start();
