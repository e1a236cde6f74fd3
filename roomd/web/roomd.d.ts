// Type declarations of roomd.js, the roomd client for browsers and Node.js.

export declare const VERSION: string;
export declare const PROTOCOL_VERSION: 1;
export declare const SUPPORTED_VERSIONS: readonly number[];
export declare const SUBPROTOCOL: "roomd.v1";
export declare const DEFAULT_NAMESPACE: "/";
export declare const PACE_SHARE: number;
export declare const ANY_PUSH: "*";

// Close codes ------------------------------------------------------------------------------------

export interface CloseCodeInfo {
  readonly name: string;
  /** Whether a client reconnects after it (false: terminal). */
  readonly reconnect: boolean;
  /** The close reason roomd sends. */
  readonly reason: string;
  readonly meaning: string;
}

/** The close-code table of roomd/protocol/_close.py. */
export declare const CLOSE_CODES: Readonly<Record<number, CloseCodeInfo>>;

export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  PROTOCOL_ERROR: 1002;
  ABNORMAL: 1006;
  POLICY_VIOLATION: 1008;
  MESSAGE_TOO_BIG: 1009;
  INTERNAL_ERROR: 1011;
  TRY_AGAIN_LATER: 1013;
  HANDSHAKE_TIMEOUT: 4000;
  CLOSED_BY_CLIENT: 4001;
  UNSUPPORTED_VERSION: 4002;
  BAD_HANDSHAKE: 4003;
  HEARTBEAT_TIMEOUT: 4004;
  SLOW_CONSUMER: 4008;
  RATE_LIMITED: 4009;
  KICKED: 4010;
  AUTH_FAILED: 4011;
  REPLACED: 4012;
}>;

/** Whether to reconnect after a close with `code` (null: no close frame). */
export declare function shouldReconnect(code: number | null | undefined): boolean;

// Errors -----------------------------------------------------------------------------------------

export declare class RoomdError extends Error {
  constructor(code: string, message: string);
  readonly code: string;
}
/** The node answered with an error. */
export declare class AckError extends RoomdError {}
/** No answer in time (code "timeout"). */
export declare class RequestTimeout extends RoomdError {
  constructor(message: string, code?: string);
}
/** Sent, but the connection dropped before the ack (code "connection_lost"). */
export declare class ConnectionLost extends RequestTimeout {
  constructor(message: string);
}
export declare class ClientError extends RoomdError {}
/** Code "offline_queue_full". */
export declare class OfflineQueueFull extends ClientError {
  constructor(size: number);
  readonly size: number;
}
/** Code "closed". */
export declare class ClientClosed extends ClientError {
  constructor(message: string, closeCode?: number | null, reason?: string);
  readonly closeCode: number | null;
  readonly reason: string;
}
/** Code "connect_failed". */
export declare class ConnectFailed extends ClientError {
  constructor(message: string, closeCode?: number | null, reason?: string);
  readonly closeCode: number | null;
  readonly reason: string;
}
/** Code "invalid_server". */
export declare class InvalidServer extends ClientError {
  constructor(url: string, problem: string);
  readonly url: string;
  readonly problem: string;
}
/** Thrown by a request handler: answered as an error ack. */
export declare class HandlerError extends RoomdError {}

// Backoff and rate -------------------------------------------------------------------------------

export interface BackoffOptions {
  /** Seconds (default 0.5). */
  base?: number;
  /** Seconds (default 30). */
  maxDelay?: number;
  /** Reconnect attempts in a row before giving up (default null: never). */
  attempts?: number | null;
}

export declare class Backoff {
  constructor(options?: BackoffOptions);
  readonly base: number;
  readonly maxDelay: number;
  readonly attempts: number | null;
  ceiling(attempt: number): number;
  delay(attempt: number, random: () => number): number;
  exhausted(attempt: number): boolean;
}

export type Decision =
  | { reconnect: true; attempt: number; delay: number }
  | { reconnect: false; gaveUp: boolean; reason: string };

export declare function decide(
  code: number | null,
  attempt: number,
  backoff: Backoff,
  random: () => number,
): Decision;

export declare class Pacer {
  constructor(rate: number, burst: number, now: number, spent?: number);
  static fromLimits(limits: Limits, now: number, spent?: number): Pacer | null;
  readonly rate: number;
  readonly burst: number;
  readonly tokens: number;
  wait(now: number): number;
  take(now: number): void;
}

// URLs and health --------------------------------------------------------------------------------

export interface UrlOptions {
  user?: string | null;
  token?: string | null;
  params?: Record<string, string | number | boolean> | null;
}

export declare function clientUrl(url: string, options?: UrlOptions): string;
export declare function httpUrl(url: string, path: string): string;

/** What GET /health of a node says. */
export interface Health {
  readonly name: string;
  readonly status: string;
  readonly version: string;
  readonly protocol: number;
  readonly uptime: number;
  readonly connections: number;
  readonly users: number;
  readonly rooms: number;
}

export type FetchLike = (
  url: string,
  init?: { signal?: AbortSignal; headers?: Record<string, string>; cache?: string },
) => Promise<{ status: number; text(): Promise<string> }>;

export declare function parseHealth(url: string, status: number, body: string): Health;
export declare function fetchHealth(
  url: string,
  options?: { timeout?: number; fetch?: FetchLike },
): Promise<Health>;

// Frames and data --------------------------------------------------------------------------------

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface RoomRef {
  ns: string;
  room: string;
}

export interface Limits {
  maxFrameBytes: number;
  rate: number;
  burst: number;
  maxRooms: number;
  maxTextChars: number;
}

export interface Welcome {
  type: "welcome";
  v: number;
  session: string;
  resumeToken: string;
  node: string;
  user: string;
  heartbeat: { interval: number; timeout: number };
  limits: Limits;
  resumed: boolean;
  seq: number;
  /** Why a resume was refused: "invalid_token", "expired", "unknown_session". */
  reason?: string;
  /** Pushes the session missed, sent right after this welcome (resumed). */
  replayed?: number;
  /** Rooms whose missed messages the node no longer holds (resumed). */
  gaps?: RoomRef[];
  /** The same for the user's inbox. */
  inboxGap?: boolean;
  /** Where the user's inbox stream stands (a new session). */
  inbox?: StreamPosition;
}

/** A position in a stream (a room's, or a user's inbox): the last message's epoch and offset. */
export interface StreamPosition {
  epoch: string;
  offset: number;
}

export interface RoomPosition extends RoomRef, StreamPosition {}

/** A push from the node. */
export interface Push<D = any> {
  event: string;
  data: D;
  /** Set on reliable pushes: 1, 2, 3 ... per session. */
  seq: number | null;
  room: RoomRef | null;
  from: string | null;
  to: string[] | null;
  /** Its position in its stream (a room's, or the user's inbox), on reliable pushes. */
  epoch: string | null;
  offset: number | null;
}

/** A message of a room's history: a push as it was sent, with its position. */
export interface HistoryMessage<D = any> {
  event: string;
  data: D;
  epoch: string;
  offset: number;
  room: RoomRef;
  from?: string;
}

export interface History<D = any> extends RoomRef, StreamPosition {
  messages: HistoryMessage<D>[];
}

/** A request frame from the node. */
export interface ServerRequest<D = any> {
  type: "request";
  id: number;
  event: string;
  data?: D;
  timeout?: number;
  room?: RoomRef;
  from?: string;
}

export type TextPayload = { content: string };
export type ImagePayload = { url: string; width: number; height: number };
export type FilePayload = { url: string; size: number; mimeType: string; name?: string };
export type CommandPayload = { action: "join" | "leave" | "mute" | "kick"; target: string };

/** A chat message as sent (the node fills in messageId, timestamp and sender). */
export type ChatMessageInput = (
  | { type: "text"; payload: TextPayload }
  | { type: "image"; payload: ImagePayload }
  | { type: "file"; payload: FilePayload }
  | { type: "command"; payload: CommandPayload }
) & { messageId?: string; timestamp?: number; metadata?: { [key: string]: Json } };

/** A chat message as delivered in a "message" push. */
export type ChatMessage = ChatMessageInput & {
  messageId: string;
  timestamp: number;
  sender: string;
};

export type SendTarget =
  { room: string; ns?: string } | { user: string } | { users: string[] } | { all: true };

export interface Member {
  user: string;
  status: string;
  connections: number;
}

// Client events ----------------------------------------------------------------------------------

export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export declare const State: Readonly<{
  IDLE: "idle";
  CONNECTING: "connecting";
  OPEN: "open";
  RECONNECTING: "reconnecting";
  CLOSED: "closed";
}>;

export interface Opened {
  session: string;
  node: string;
  user: string;
  url: string;
  resumed: boolean;
  /** False for the first connection. */
  reconnect: boolean;
  rejoined: RoomRef[];
  rejoinFailed: RoomRef[];
  /** Queued events sent on this connection before it became open. */
  flushed: number;
  /** Pushes the session missed, replayed right after the welcome (resumed). */
  replayed: number;
  /** Calls not acknowledged before the drop, sent again with their cmid (resumed). */
  resent: number;
  /** Why the node did not resume the session (resumed false): "invalid_token", "expired",
   * "unknown_session"; null for a first connection or a resumed one. */
  reason: string | null;
  /** Rooms whose missed messages the node no longer held: resynchronise them (history). */
  gaps: RoomRef[];
  /** The same for the user's inbox (direct messages). */
  inboxGap: boolean;
}

export interface Closed {
  code: number | null;
  reason: string;
  /** Whether the client will try again. */
  reconnect: boolean;
  /** The code is the client's own verdict (1006 for a lost connection, 4004 for a missed pong). */
  local: boolean;
}

export interface Reconnecting {
  attempt: number;
  /** Seconds before the attempt. */
  delay: number;
  /** The URL tried next, when there is only one (else chosen at the attempt). */
  url: string | null;
}

export interface RepeatLimit {
  attempts: number;
  code: number | null;
  reason: string;
}

export interface PongSample {
  /** Seconds. */
  rtt: number;
  smoothed: number;
  serverTs: number;
}

export interface ProtocolProblem {
  code: string;
  message: string;
}

export interface EmitFailed {
  event: string;
  data: any;
  cmid: string;
  code: string;
  message: string;
}

export interface StateChange {
  state: ClientState;
  previous: ClientState;
}

export interface LifecycleEvents {
  $state: StateChange;
  $open: Opened;
  $close: Closed;
  $reconnecting: Reconnecting;
  "$repeat-limit": RepeatLimit;
  $pong: PongSample;
  $error: ProtocolProblem;
  "$emit-failed": EmitFailed;
}

export declare const Lifecycle: Readonly<{
  STATE: "$state";
  OPEN: "$open";
  CLOSE: "$close";
  RECONNECTING: "$reconnecting";
  REPEAT_LIMIT: "$repeat-limit";
  PONG: "$pong";
  ERROR: "$error";
  EMIT_FAILED: "$emit-failed";
}>;

// The client -------------------------------------------------------------------------------------

export type TokenSource = string | (() => string | Promise<string>);

export interface WebSocketLike {
  readonly readyState: number;
  // Events as in the DOM: onmessage gets {data}, onclose gets {code, reason}.
  onopen: ((event: any) => any) | null;
  onmessage: ((event: any) => any) | null;
  onclose: ((event: any) => any) | null;
  onerror: ((event: any) => any) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
) => WebSocketLike;

export interface ClientOptions {
  /** Development nodes (`roomd --dev`): the user name, as `?user=`. */
  user?: string | null;
  /** A JWT, or a function called for each connection attempt; sent as `?token=`. */
  token?: TokenSource | null;
  /** More query parameters for the WebSocket URL. */
  params?: Record<string, string | number | boolean>;
  backoff?: Backoff | BackoffOptions;
  /** Seconds between heartbeat pings (default 15, at most half the node's heartbeat timeout). */
  heartbeatInterval?: number;
  /** Seconds to wait for a pong before dropping the connection (default 10). */
  heartbeatTimeout?: number;
  /** Seconds from opening the WebSocket to the welcome (default 10). */
  connectTimeout?: number;
  /** Default timeout of calls, in seconds (default 10). */
  callTimeout?: number;
  /** Seconds to wait for the node's close frame on close() (default 2). */
  closeTimeout?: number;
  /** Seconds to wait for each node's /health when choosing among several URLs (default 2). */
  healthTimeout?: number;
  /** Events queued while not open (default 256). */
  offlineQueue?: number;
  /** Offer session resume in the hello of a reconnect (default true). */
  resume?: boolean;
  /** With several URLs, connect to the least loaded healthy node (default true). */
  preferLeastLoaded?: boolean;
  /** Sent in the hello (default "roomd-js/VERSION"). */
  clientName?: string;
  /** The WebSocket constructor (default: the global one). */
  WebSocket?: WebSocketConstructor;
  /** fetch() for /health (default: the global one). */
  fetch?: FetchLike;
  /** Uniform in [0, 1): the backoff's jitter (default Math.random). */
  random?: () => number;
}

export interface CallOptions {
  /** Seconds (default: the client's callTimeout); covers the time in the offline queue. */
  timeout?: number;
  /** Called if the call has to wait in the offline queue. */
  onPending?: (info: { event: string; cmid: string; queued: number; state: ClientState }) => void;
}

export type RequestHandler = (data: any, request: ServerRequest) => unknown;

export declare class RoomdClient {
  constructor(urls: string | readonly string[], options?: ClientOptions);
  /** The node URLs, in the order tried (a draining node's reconnect frame adds its alternates). */
  readonly urls: readonly string[];
  readonly user: string | null;
  readonly backoff: Backoff;
  readonly state: ClientState;
  readonly connected: boolean;
  readonly welcome: Welcome | null;
  readonly session: string | null;
  readonly node: string | null;
  readonly url: string | null;
  readonly resumed: boolean;
  readonly rooms: RoomRef[];
  readonly queued: number;
  readonly lastSeq: number;
  /** Where the client is in the streams it follows (what a resume presents). */
  readonly positions: { rooms: RoomPosition[]; inbox: StreamPosition | null };
  readonly rtt: { latest: number | null; smoothed: number | null; samples: number };
  readonly reconnects: number;
  readonly closeCode: number | null;
  readonly closeReason: string;

  on<K extends keyof LifecycleEvents>(event: K, fn: (item: LifecycleEvents[K]) => void): () => void;
  on(event: string, fn: (push: Push) => void): () => void;
  off<K extends keyof LifecycleEvents>(event: K, fn?: (item: LifecycleEvents[K]) => void): void;
  off(event: string, fn?: (push: Push) => void): void;
  once<K extends keyof LifecycleEvents>(event: K): Promise<LifecycleEvents[K]>;
  once(event: string): Promise<Push>;
  onRequest(event: string, handler: RequestHandler | null): void;

  connect(): Promise<Opened>;
  close(): Promise<void>;
  /** While waiting to reconnect, try now (e.g. on a browser's "online" event). */
  reconnectNow(): boolean;
  ping(): boolean;

  emit(event: string, data?: unknown): Promise<void>;
  call<R = any>(event: string, data?: unknown, options?: CallOptions): Promise<R>;
  call<R = any>(
    event: string,
    data: unknown,
    options: CallOptions | null,
    callback: (error: RoomdError | Error | null, result: R | undefined) => void,
  ): void;
  call<R = any>(
    event: string,
    data: unknown,
    callback: (error: RoomdError | Error | null, result: R | undefined) => void,
  ): void;

  join(room: string, ns?: string): Promise<RoomRef & StreamPosition & { members: string[] }>;
  leave(room: string, ns?: string): Promise<RoomRef>;
  members(room: string, ns?: string): Promise<Member[]>;
  onlineUsers(): Promise<string[]>;
  /** The users online; then "users.online" pushes ({users}) on every change. */
  subscribeUsers(): Promise<string[]>;
  unsubscribeUsers(): Promise<{}>;
  history<D = ChatMessage>(
    room: string,
    options?: { ns?: string; since?: StreamPosition | null; limit?: number | null },
  ): Promise<History<D>>;
  send(
    to: SendTarget,
    message: ChatMessageInput,
    options?: { exceptSelf?: boolean; volatile?: boolean },
  ): Promise<{ messageId: string }>;
  sendText(
    text: string,
    target: { room: string; ns?: string } | { user: string },
  ): Promise<{ messageId: string }>;
  typing(room: string, typing?: boolean, ns?: string): Promise<void>;
  setStatus(status: string, text?: string | null): Promise<{}>;
}
