// Type-checks against roomd.d.ts through the package's "exports" (tsc --noEmit --strict).
// It is compiled, never run: it shows the API as an application uses it.
import {
  AckError,
  Backoff,
  CLOSE_CODES,
  ClientClosed,
  CloseCode,
  ConnectionLost,
  Lifecycle,
  OfflineQueueFull,
  RequestTimeout,
  RoomdClient,
  fetchHealth,
  shouldReconnect,
  type ChatMessage,
  type Health,
  type Opened,
  type Push,
} from "roomd";

export async function example(): Promise<void> {
  const client = new RoomdClient(["ws://127.0.0.1:9000/ws", "ws://127.0.0.1:9001/ws"], {
    user: "alice",
    backoff: new Backoff({ base: 0.5, maxDelay: 10, attempts: 20 }),
    heartbeatInterval: 15,
    offlineQueue: 100,
  });
  const tokenClient = new RoomdClient("wss://chat.example", {
    token: async () => "jwt",
    backoff: { attempts: 5 },
    WebSocket: globalThis.WebSocket,
  });
  void tokenClient;

  const offOpen = client.on(Lifecycle.OPEN, (opened: Opened) => {
    console.log(opened.node, opened.rejoined);
    if (opened.resumed)
      console.log(`resumed: ${opened.replayed} replayed, ${opened.resent} resent`);
    else if (opened.reason !== null) console.log(`not resumed: ${opened.reason}`);
    for (const gap of opened.gaps) console.log(`resynchronise ${gap.ns} ${gap.room}`);
    if (opened.inboxGap) console.log("direct messages may be missing");
  });
  offOpen();
  client.on("$close", ({ code, reason, reconnect }) => console.log(code, reason, reconnect));
  client.on("$reconnecting", ({ attempt, delay }) => console.log(attempt, delay.toFixed(2)));
  globalThis.addEventListener?.("online", () => client.reconnectNow());
  client.on("$repeat-limit", ({ attempts }) => console.log(attempts));
  client.on("$pong", ({ rtt, smoothed }) => console.log(rtt * 1000, smoothed));
  client.on("$emit-failed", ({ event, code }) => console.log(event, code));
  client.on("message", (push: Push<ChatMessage>) => {
    const message = push.data;
    if (message.type === "image") console.log(message.payload.width, message.payload.height);
    if (message.type === "file") console.log(message.payload.mimeType, message.payload.size);
    console.log(push.from, push.room?.room, push.seq, push.epoch, push.offset);
  });
  client.onRequest("confirm", async (data: { question: string }) => ({
    yes: data.question.length > 0,
  }));

  const opened: Opened = await client.connect();
  console.log(opened.session);
  const joined = await client.join("lobby");
  console.log(joined.members.join(", "), joined.epoch, joined.offset);
  const history = await client.history("lobby", { limit: 20 });
  for (const message of history.messages) console.log(message.offset, message.data.sender);
  const since = await client.history("lobby", { since: { epoch: joined.epoch, offset: 0 } });
  console.log(since.offset, client.positions.rooms[0]?.offset, client.positions.inbox?.epoch);
  client.on("users.online", (push: Push<{ users: string[] }>) => console.log(push.data.users));
  console.log((await client.subscribeUsers()).length);
  const { messageId } = await client.sendText("hi", { room: "lobby" });
  console.log(messageId);
  await client.send(
    { user: "bob" },
    { type: "image", payload: { url: "https://x/y.png", width: 1, height: 2 } },
  );
  await client.emit("typing", { room: "lobby", typing: true });
  const users: string[] = await client.onlineUsers();
  console.log(users);
  const result = await client.call<{ n: number }>(
    "echo",
    { n: 1 },
    { timeout: 5, onPending: ({ queued }) => console.log(queued) },
  );
  console.log(result.n);
  client.call("echo", { n: 2 }, (error, answer) => {
    if (error instanceof AckError) console.log(error.code, error.message);
    else if (error === null) console.log(answer);
  });
  try {
    await client.call("room.leave", { room: "nowhere" });
  } catch (error) {
    if (error instanceof ConnectionLost) console.log("maybe handled", error.code);
    else if (error instanceof RequestTimeout) console.log("timeout");
    else if (error instanceof OfflineQueueFull) console.log(error.size);
    else if (error instanceof ClientClosed) console.log(error.closeCode, error.reason);
  }
  const health: Health = await fetchHealth("ws://127.0.0.1:9000");
  console.log(health.users, CLOSE_CODES[CloseCode.KICKED]?.reconnect, shouldReconnect(4500));
  await client.close();
}
