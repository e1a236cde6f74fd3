// Drawing the chat app from its state. Text from the network only ever reaches the page as
// text nodes and attribute values (never as HTML).

/** An element: `h("li", {class: "x", onclick: fn, dataset: {k: v}}, child, "text", ...)`. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function formatTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

export function formatSize(bytes) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

export function initials(name) {
  // "serverA" -> "SA", "eu-west" -> "EW", "lobby" -> "LO"
  const words = String(name)
    .split(/[^A-Za-z0-9]+|(?=[A-Z0-9])/)
    .filter(Boolean);
  const letters = words.length > 1 ? words[0][0] + words[1][0] : String(name).slice(0, 2);
  return letters.toUpperCase();
}

const STATUS_LABELS = { online: "online", away: "away" };

/** The dot class and label of a user's status. */
export function statusOf(entry) {
  if (!entry) return { dot: "online", label: "online" };
  const known = STATUS_LABELS[entry.status];
  const label = known ?? entry.status;
  return {
    dot: known ? entry.status : "custom",
    label: entry.text ? `${label}: ${entry.text}` : label,
  };
}

/** The connection line of a server. */
export function connectionText(server) {
  switch (server.status) {
    case "online": {
      const rtt = server.rtt;
      const ms = rtt === null ? null : `${(rtt * 1000).toFixed(rtt < 0.01 ? 1 : 0)} ms`;
      const text = ms ? `online · ${ms}` : "online";
      const note = server.resumeNote;
      if (note !== null && note.until > Date.now()) {
        return { cls: "online", text: `${text} · ${note.text}`, short: note.short };
      }
      return { cls: "online", text, short: ms ?? "online" };
    }
    case "connecting":
      return { cls: "connecting", text: "connecting…", short: "connecting" };
    case "offline": {
      const next = server.reconnect;
      if (next === null)
        return { cls: "offline", text: "offline · reconnecting…", short: "offline" };
      const seconds = Math.max(0, (next.at - Date.now()) / 1000);
      const wait = seconds > 0.05 ? ` in ${seconds.toFixed(1)} s` : "…";
      return {
        cls: "offline",
        text: `reconnecting · attempt ${next.attempt}${wait}`,
        short: `retry ${next.attempt}${wait}`,
      };
    }
    default:
      return {
        cls: "error",
        text: server.lastError ? `disconnected · ${server.lastError}` : "disconnected",
        short: "disconnected",
      };
  }
}

export function renderServers(list, servers, activeId, onPick) {
  list.replaceChildren(
    ...[...servers.values()].map((server) => {
      const active = server.id === activeId;
      const users = server.users === null ? "" : String(server.users);
      const title = `${server.name} (${server.id}): ${server.status}${users ? `, ${users} users` : ""}`;
      return h(
        "li",
        {},
        h(
          "button",
          {
            class: `server${active ? " active" : ""}`,
            title,
            "aria-label": title,
            "aria-current": active ? "true" : null,
            dataset: { server: server.id, status: server.status },
            onclick: () => onPick(server.id),
          },
          h("span", { class: "server-initials" }, initials(server.name)),
          h("span", { class: `dot ${server.status}` }),
          users ? h("span", { class: "badge" }, users) : null,
        ),
      );
    }),
  );
}

export function renderConversations(list, server, kind, onPick) {
  const items = [...server.conversations.values()].filter((c) => c.kind === kind);
  items.sort((a, b) => a.title.localeCompare(b.title));
  if (items.length === 0) {
    const hint =
      kind === "room" ? "No rooms yet: join one above." : "Pick someone online to write to.";
    list.replaceChildren(h("li", { class: "empty" }, hint));
    return;
  }
  list.replaceChildren(
    ...items.map((conv) =>
      h(
        "li",
        {},
        h(
          "button",
          {
            class: `item${conv.key === server.active ? " active" : ""}`,
            dataset: { conv: conv.key },
            onclick: () => onPick(conv.key),
          },
          kind === "dm"
            ? h("span", { class: `dot ${statusOf(server.statuses.get(conv.peer)).dot}` })
            : null,
          h("span", { class: "item-name" }, kind === "room" ? `# ${conv.room}` : conv.peer),
          conv.unread > 0 ? h("span", { class: "badge" }, String(conv.unread)) : null,
        ),
      ),
    ),
  );
}

export function renderDirectory(list, server, onJoin) {
  const rooms = server.directory.filter(
    (r) => !server.conversations.has(`room:${JSON.stringify([r.ns, r.room])}`),
  );
  if (rooms.length === 0) {
    list.replaceChildren(h("li", { class: "empty" }, "None"));
    return;
  }
  list.replaceChildren(
    ...rooms
      .slice(0, 50)
      .map((r) =>
        h(
          "li",
          {},
          h(
            "button",
            { class: "item", dataset: { room: r.room }, onclick: () => onJoin(r.room, r.ns) },
            h("span", { class: "item-name" }, `# ${r.room}`),
            h("span", { class: "muted small" }, `${r.members}`),
          ),
        ),
      ),
  );
}

function messageBody(message) {
  const p = message.payload ?? {};
  switch (message.type) {
    case "text":
      return h("div", { class: "text" }, p.content);
    case "image": {
      const scale = Math.min(1, 320 / p.width, 240 / p.height);
      const figure = h("figure", { class: "image" });
      const img = h("img", {
        src: p.url,
        alt: `image ${p.width}×${p.height}`,
        width: String(Math.max(1, Math.round(p.width * scale))),
        height: String(Math.max(1, Math.round(p.height * scale))),
        loading: "lazy",
        referrerpolicy: "no-referrer",
        onerror: () => figure.classList.add("broken"),
      });
      figure.append(
        img,
        h(
          "figcaption",
          { class: "muted small" },
          `${p.width}×${p.height} · `,
          h("a", { href: p.url, target: "_blank", rel: "noopener noreferrer" }, "open"),
        ),
      );
      return figure;
    }
    case "file":
      return h(
        "a",
        { class: "file", href: p.url, target: "_blank", rel: "noopener noreferrer" },
        h("span", { class: "file-icon" }, "FILE"),
        h(
          "span",
          { class: "file-meta" },
          h("strong", {}, p.name || p.url.split("/").pop() || p.url),
          h("span", { class: "muted small" }, `${p.mimeType} · ${formatSize(p.size)}`),
        ),
      );
    case "command":
      return h("div", { class: "muted" }, `/${p.action} ${p.target}`);
    default:
      return h("div", { class: "muted" }, `(a ${message.type} message)`);
  }
}

const STATES = { sending: "sending…", queued: "waiting for the connection…" };

export function renderMessages(list, conv, me) {
  const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  if (conv === null) {
    list.replaceChildren(
      h("li", { class: "placeholder" }, "Join a room, or pick someone online to write to."),
    );
    return;
  }
  let previous = null;
  const items = conv.messages.map((m) => {
    if (m.type === "notice") {
      previous = null;
      return h("li", { class: "notice" }, `${m.text} · ${formatTime(m.timestamp)}`);
    }
    const mine = m.sender === me;
    const grouped =
      previous !== null &&
      previous.sender === m.sender &&
      m.timestamp - previous.timestamp < 120000;
    previous = m;
    return h(
      "li",
      {
        class: `message${mine ? " mine" : ""}${grouped ? " grouped" : ""}${m.state in STATES ? " pending" : ""}`,
        dataset: { messageId: m.messageId ?? "", type: m.type },
      },
      grouped
        ? null
        : h(
            "div",
            { class: "meta" },
            h("strong", {}, m.sender),
            h("time", { class: "muted small" }, formatTime(m.timestamp)),
          ),
      messageBody(m),
      m.state in STATES ? h("div", { class: "muted small state" }, STATES[m.state]) : null,
    );
  });
  list.replaceChildren(
    ...(items.length ? items : [h("li", { class: "placeholder" }, "No messages yet. Say hi!")]),
  );
  if (stick) list.scrollTop = list.scrollHeight;
}

export function typingText(conv) {
  if (conv === null || conv.typing.size === 0) return "";
  const users = [...conv.typing.keys()].sort();
  if (users.length === 1) return `${users[0]} is typing…`;
  if (users.length <= 3) return `${users.slice(0, -1).join(", ")} and ${users.at(-1)} are typing…`;
  return "several people are typing…";
}

function personItem(server, user, onPick) {
  const status = statusOf(server.statuses.get(user));
  const me = user === server.me;
  return h(
    "li",
    {},
    h(
      "button",
      {
        class: "item person",
        dataset: { user },
        title: me ? "you" : `write to ${user}`,
        disabled: me,
        onclick: () => onPick(user),
      },
      h("span", { class: `dot ${status.dot}` }),
      h("span", { class: "item-name" }, user, me ? h("span", { class: "muted" }, " (you)") : null),
      h("span", { class: "muted small status-label" }, status.label),
    ),
  );
}

export function renderPeople(membersList, onlineList, server, conv, onPick) {
  if (conv === null || conv.kind !== "room") {
    membersList.replaceChildren(
      h("li", { class: "empty" }, conv ? "A direct conversation" : "No room open"),
    );
  } else {
    const members = [...conv.members.keys()].sort();
    membersList.replaceChildren(...members.map((user) => personItem(server, user, onPick)));
  }
  onlineList.replaceChildren(
    ...(server.online.length
      ? server.online.map((user) => personItem(server, user, onPick))
      : [h("li", { class: "empty" }, "Nobody")]),
  );
}
