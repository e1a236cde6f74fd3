// Drawing the operator view from `cluster.stats` samples. Text from the network only ever reaches
// the page as text nodes and attribute values (never as HTML).

import { h } from "/app/view.js";

const SPARK_WIDTH = 120;
const SPARK_HEIGHT = 34;
const SVG = "http://www.w3.org/2000/svg";

/** The claims of a JWT (its payload, not verified: the node verifies the token), or null. */
export function tokenClaims(token) {
  const parts = String(token).split(".");
  if (parts.length !== 3) return null;
  try {
    const json = atob(parts[1].replaceAll("-", "+").replaceAll("_", "/"));
    const claims = JSON.parse(json);
    return claims !== null && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

export function count(n) {
  return Number.isFinite(n) ? n.toLocaleString("en-US") : "–";
}

function plural(n, word) {
  return `${count(n)} ${word}${n === 1 ? "" : "s"}`;
}

/** "3 s", "4 min", "2 h" ago. */
export function age(seconds) {
  if (!Number.isFinite(seconds)) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

/** A small line chart of `values` (the last samples), as an SVG element. */
export function sparkline(values) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${SPARK_WIDTH} ${SPARK_HEIGHT}`);
  svg.setAttribute("class", "spark");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("preserveAspectRatio", "none");
  if (values.length < 2) return svg;
  const top = Math.max(1, ...values) * 1.25; // headroom: a steady series is not a ceiling
  const step = SPARK_WIDTH / (values.length - 1);
  const points = values.map(
    (v, i) =>
      `${(i * step).toFixed(1)},${(SPARK_HEIGHT - 2 - (v / top) * (SPARK_HEIGHT - 4)).toFixed(1)}`,
  );
  const area = document.createElementNS(SVG, "polygon");
  area.setAttribute(
    "points",
    `0,${SPARK_HEIGHT} ${points.join(" ")} ${SPARK_WIDTH},${SPARK_HEIGHT}`,
  );
  area.setAttribute("class", "spark-area");
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("class", "spark-line");
  svg.append(area, line);
  return svg;
}

/** The totals: nodes up, connections, users online, rooms, each with its recent history. */
export function renderCards(container, stats, samples) {
  const nodes = stats.nodes ?? [];
  const up = nodes.filter((n) => n.status === "up" || n.status === "draining").length;
  const cards = [
    ["nodes", "Nodes up", `${up} / ${nodes.length}`, samples.map((s) => s.up), nodeNote(nodes)],
    [
      "connections",
      "Connections",
      count(sumOf(nodes, "connections")),
      samples.map((s) => s.connections),
      "WebSockets open",
    ],
    [
      "users",
      "Users online",
      count(stats.usersOnline),
      samples.map((s) => s.users),
      "in the cluster",
    ],
    [
      "rooms",
      "Rooms",
      count(roomCount(stats)),
      samples.map((s) => s.rooms),
      stats.roomsTruncated ? "more than listed" : "with members",
    ],
  ];
  container.replaceChildren(
    ...cards.map(([key, label, value, series, note]) =>
      h(
        "article",
        { class: "card-stat", dataset: { card: key } },
        h("div", { class: "card-label" }, label),
        h("div", { class: "card-value" }, value),
        h("div", { class: "card-note muted small" }, note),
        sparkline(series),
      ),
    ),
  );
}

function nodeNote(nodes) {
  const down = nodes.filter((n) => n.status === "down" || n.status === "left").length;
  return down > 0 ? `${down} down or left` : "all healthy";
}

export function sumOf(nodes, field) {
  return nodes.reduce((sum, n) => sum + (Number.isFinite(n[field]) ? n[field] : 0), 0);
}

export function roomCount(stats) {
  return (stats.rooms ?? []).length;
}

const STATUS_TEXT = { up: "up", draining: "draining", down: "down", left: "left" };

export function renderNodes(list, meta, stats, self) {
  const nodes = [...(stats.nodes ?? [])].sort((a, b) => a.name.localeCompare(b.name));
  const busiest = Math.max(1, ...nodes.map((n) => n.connections ?? 0));
  meta.textContent = `${plural(nodes.length, "node")} · ${modeText(stats.mode)}`;
  list.replaceChildren(
    ...nodes.map((node) => {
      const status = STATUS_TEXT[node.status] ?? node.status;
      const live = node.status === "up" || node.status === "draining";
      const share = ((node.connections ?? 0) / busiest) * 100;
      return h(
        "li",
        { class: `node ${live ? "" : "gone"}`, dataset: { node: node.name, status: node.status } },
        h(
          "div",
          { class: "node-head" },
          h("span", { class: `status ${node.status}` }, status),
          h("strong", { class: "node-name" }, node.name),
          node.name === self ? h("span", { class: "tag" }, "this node") : null,
        ),
        h("div", { class: "node-url muted small" }, node.url ?? ""),
        live
          ? h(
              "div",
              { class: "node-figures" },
              figure("connections", node.connections),
              figure("users", node.users),
              figure("rooms", node.rooms),
            )
          : h(
              "div",
              { class: "node-gone muted small" },
              node.since
                ? `${status} since ${new Date(node.since * 1000).toLocaleTimeString()}`
                : status,
            ),
        live
          ? h(
              "div",
              { class: "load", title: `${count(node.connections)} connections` },
              fill(share),
            )
          : null,
        live
          ? h(
              "div",
              { class: "muted small heard" },
              node.name === self ? "serving this page" : `heard from ${age(node.lastSeen)} ago`,
            )
          : null,
      );
    }),
  );
}

/** The filled part of a bar, `percent` wide (set through CSSOM: the page's policy forbids
 * inline style attributes). */
function fill(percent) {
  const span = h("span");
  span.style.width = `${Math.max(0, Math.min(100, percent)).toFixed(1)}%`;
  return span;
}

function figure(label, value) {
  return h(
    "div",
    { class: "figure", dataset: { figure: label } },
    h("b", {}, count(value)),
    h("span", {}, label),
  );
}

function modeText(mode) {
  return { none: "a single node", broker: "through a broker", mesh: "a mesh" }[mode] ?? mode;
}

const BUS_COUNTERS = [
  ["published", "published"],
  ["received", "received"],
  ["dropped", "dropped"],
  ["badMessages", "bad messages"],
  ["snapshotsRequested", "snapshots asked"],
];

/** The bus: live or not, and its counters with their rates since the previous sample. */
export function renderBus(list, pill, stats, rates) {
  const bus = stats.bus;
  if (!bus) {
    pill.textContent = "no bus";
    pill.className = "pill idle";
    list.replaceChildren(
      h("p", { class: "muted small" }, "A single node: nothing to exchange with other nodes."),
    );
    return;
  }
  pill.textContent = bus.live ? "live" : "down";
  pill.className = `pill ${bus.live ? "ok" : "bad"}`;
  list.replaceChildren(
    ...BUS_COUNTERS.filter(([key]) => key in bus).flatMap(([key, label]) => {
      const rate = rates[key];
      const warn = (key === "dropped" || key === "badMessages") && bus[key] > 0;
      return [
        h("dt", {}, label),
        h(
          "dd",
          { class: warn ? "warn" : "", dataset: { counter: key } },
          count(bus[key]),
          Number.isFinite(rate)
            ? h("span", { class: "rate muted" }, ` ${rate.toFixed(rate < 10 ? 1 : 0)}/s`)
            : null,
        ),
      ];
    }),
  );
}

export function renderRooms(body, meta, stats, filter) {
  const rooms = stats.rooms ?? [];
  const wanted = filter.trim().toLowerCase();
  const shown = wanted
    ? rooms.filter((r) => `${r.ns} ${r.room}`.toLowerCase().includes(wanted))
    : rooms;
  const largest = Math.max(1, ...rooms.map((r) => r.members));
  if (shown.length === 0) {
    const text = rooms.length === 0 ? "No room has members." : "No room matches.";
    body.replaceChildren(h("tr", { class: "empty" }, h("td", { colspan: "3" }, text)));
  } else {
    body.replaceChildren(
      ...shown.map((r) =>
        h(
          "tr",
          { dataset: { room: r.room, ns: r.ns } },
          h(
            "td",
            { class: "room-name" },
            h("span", { class: "hash" }, "#"),
            r.room,
            r.ns === "/" ? null : h("span", { class: "ns muted small" }, ` in ${r.ns}`),
          ),
          h("td", { class: "num members" }, count(r.members)),
          h(
            "td",
            { class: "bar-col" },
            h("div", { class: "share" }, fill((r.members / largest) * 100)),
          ),
        ),
      ),
    );
  }
  const truncated = stats.roomsTruncated ? " (the largest; more exist)" : "";
  meta.textContent =
    wanted && shown.length !== rooms.length
      ? `${plural(shown.length, "room")} of ${count(rooms.length)}${truncated}`
      : `${plural(rooms.length, "room")}${truncated}`;
}
