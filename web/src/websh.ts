// The browser end of a terminal session (see proto::websh and
// ARCHITECTURE.md "Terminals"). One WebsshClient lives as long as the page
// shows the session; WebSockets come and go under it.
//
// Offsets count bytes from the session's start, in both directions:
// - output: `received` is what we have handed to the terminal; a new
//   connection asks for `?offset=received`, so every byte is written exactly
//   once whatever drops. `consumed` is what the terminal has finished
//   processing (its write callback); acking it is the flow control: the
//   gateway stays at most a bounded amount ahead of what we consumed.
// - input: bytes typed are kept until the gateway confirms them (the
//   `input_offset` of the next `attached`) and resent after it.

import { getSession, sessionIsLive, sessionSocketUrl, ApiError } from './api';

export type ConnState = 'connecting' | 'attached' | 'reconnecting' | 'ended';

export type ServerMsg =
  | { type: 'attached'; session: string; output_offset: number; input_offset: number; read_only: boolean; rows: number; cols: number }
  | { type: 'status'; agent_connected: boolean }
  | { type: 'exit'; code: number }
  | { type: 'closed'; reason: string }
  | { type: 'error'; code: string; detail: string };

export interface WebshHandlers {
  /** Write bytes to the terminal and call `done` once it has processed them. */
  output(data: Uint8Array, done: () => void): void;
  /** The connection state changed; `detail` says why, for the banner. */
  state(state: ConnState, detail: string): void;
  attached?(msg: Extract<ServerMsg, { type: 'attached' }>): void;
  agentStatus?(connected: boolean): void;
  /** The session is over (exit code, or a reason); no more reconnecting. */
  ended(how: { code?: number; reason?: string }): void;
  /** Output bytes were missing (the gateway could not resend them). */
  gap?(from: number, to: number): void;
}

/** Ack at least this often (bytes) … */
const ACK_BYTES = 32 * 1024;
/** … or this long after the terminal consumed anything. */
const ACK_DELAY_MS = 100;
/** Unconfirmed input kept for a resend. */
const INPUT_KEEP = 1 << 20;
/** Input goes out in frames of at most this size (the gateway takes up to 1 MiB). */
const INPUT_FRAME = 16 * 1024;
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 10_000;
/** Server error codes after which reconnecting cannot help. */
const FATAL_CODES = new Set(['not_found', 'session_not_found', 'forbidden', 'permission_denied', 'session_closed', 'not_authenticated', 'invalid_token']);

export class WebshClient {
  /** Output bytes handed to the terminal (the offset to resume from). */
  received = 0;
  /** Output bytes the terminal has processed (what we ack). */
  consumed = 0;
  state: ConnState = 'connecting';
  readOnly = false;
  connections = 0;
  /** Stable across this page's reconnections (input offsets are per client). */
  readonly clientId = randomId();

  private ws: WebSocket | null = null;
  private disposed = false;
  private ended = false;
  private attachedHere = false;
  /** Offset of the next output byte on the current connection. */
  private rxAt = 0;
  private lastAck = -1;
  private ackTimer: number | undefined;
  private retryTimer: number | undefined;
  private failures = 0;
  private lastError = '';
  /** Input not yet confirmed: starts at `inputStart` (null before the first attach). */
  private pending: Uint8Array<ArrayBuffer> = new Uint8Array(0);
  private inputStart: number | null = null;
  private size: { rows: number; cols: number } | null = null;
  private sentSize: { rows: number; cols: number } | null = null;

  constructor(
    readonly sessionId: string,
    private readonly h: WebshHandlers,
  ) {
    window.addEventListener('online', this.onOnline);
  }

  connect(): void {
    if (this.disposed || this.ended) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    if (this.ws) {
      const old = this.ws;
      this.ws = null;
      this.detachSocket(old);
    }
    this.setState(this.connections === 0 ? 'connecting' : 'reconnecting', this.connections === 0 ? 'Connecting…' : 'Reconnecting…');
    let ws: WebSocket;
    try {
      ws = new WebSocket(sessionSocketUrl(this.sessionId, this.received, this.clientId));
    } catch (e) {
      this.lastError = String(e);
      this.scheduleReconnect();
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.attachedHere = false;
    this.connections++;
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      if (typeof ev.data === 'string') this.onText(ev.data);
      else this.onBinary(new Uint8Array(ev.data as ArrayBuffer));
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.onSocketGone(ev.code, ev.reason);
    };
    ws.onerror = () => {
      /* onclose follows and decides */
    };
  }

  /** Terminal input (keys, paste). */
  sendInput(data: Uint8Array<ArrayBuffer>): void {
    if (this.ended || this.readOnly || data.length === 0) return;
    const merged = new Uint8Array(this.pending.length + data.length);
    merged.set(this.pending);
    merged.set(data, this.pending.length);
    this.pending = merged;
    if (this.pending.length > INPUT_KEEP) {
      const drop = this.pending.length - INPUT_KEEP;
      this.pending = this.pending.slice(drop);
      if (this.inputStart !== null) this.inputStart += drop;
    }
    if (this.attachedHere) this.sendBinary(data);
  }

  private sendBinary(data: Uint8Array<ArrayBuffer>): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    for (let i = 0; i < data.length; i += INPUT_FRAME) ws.send(data.subarray(i, i + INPUT_FRAME));
  }

  resize(rows: number, cols: number): void {
    this.size = { rows, cols };
    this.flushResize();
  }

  /** Ends the session on the server (the shell is hung up). */
  closeSession(): void {
    this.sendJson({ type: 'close' });
  }

  /** Leaves the session running and stops using it. */
  dispose(): void {
    this.disposed = true;
    window.removeEventListener('online', this.onOnline);
    clearTimeout(this.retryTimer);
    clearTimeout(this.ackTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      this.detachSocket(ws);
    }
  }

  /** Drops the current connection as a network failure would (tests, "Reconnect now"). */
  drop(): void {
    if (this.ws) {
      const ws = this.ws;
      ws.close(4000, 'client dropped the connection');
      this.ws = null;
      this.onSocketGone(4000, 'dropped');
    } else if (!this.ended) {
      this.connect();
    }
  }

  private detachSocket(ws: WebSocket): void {
    ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(1000, 'detached');
    } catch {
      /* already closing */
    }
  }

  private setState(s: ConnState, detail: string): void {
    this.state = s;
    this.h.state(s, detail);
  }

  private sendJson(msg: unknown): boolean {
    if (this.ws?.readyState === WebSocket.OPEN && this.attachedHere) {
      this.ws.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  private flushResize(): void {
    if (!this.size || this.readOnly) return;
    const s = this.size;
    if (this.sentSize && this.sentSize.rows === s.rows && this.sentSize.cols === s.cols) return;
    if (this.sendJson({ type: 'resize', rows: s.rows, cols: s.cols })) this.sentSize = { ...s };
  }

  private onText(text: string): void {
    let msg: ServerMsg;
    try {
      msg = JSON.parse(text) as ServerMsg;
    } catch {
      console.warn('websh: unreadable message', text);
      return;
    }
    switch (msg.type) {
      case 'attached':
        this.onAttached(msg);
        break;
      case 'status':
        this.h.agentStatus?.(msg.agent_connected);
        break;
      case 'exit':
        this.end({ code: msg.code });
        break;
      case 'closed':
        this.end({ reason: msg.reason });
        break;
      case 'error':
        this.lastError = msg.detail || msg.code;
        if (FATAL_CODES.has(msg.code)) this.end({ reason: this.lastError });
        else this.h.state(this.state, this.lastError);
        break;
      default:
        console.debug('websh: ignoring', msg);
    }
  }

  private onAttached(msg: Extract<ServerMsg, { type: 'attached' }>): void {
    this.attachedHere = true;
    this.failures = 0;
    this.lastError = '';
    this.readOnly = !!msg.read_only;
    this.rxAt = msg.output_offset;
    this.sentSize = { rows: msg.rows, cols: msg.cols };
    // Input: drop what the gateway already has, resend the rest.
    const k = msg.input_offset;
    if (this.inputStart === null) {
      this.inputStart = k;
    } else if (k >= this.inputStart + this.pending.length) {
      this.pending = new Uint8Array(0);
      this.inputStart = k;
    } else if (k >= this.inputStart) {
      this.pending = this.pending.slice(k - this.inputStart);
      this.inputStart = k;
    } else {
      console.warn(`websh: gateway has input to ${k}, we kept from ${this.inputStart}; resending what we have`);
    }
    if (this.readOnly) this.pending = new Uint8Array(0);
    this.setState('attached', '');
    this.h.attached?.(msg);
    if (this.pending.length > 0) this.sendBinary(this.pending);
    this.flushResize();
    this.lastAck = -1;
    this.ack(true);
  }

  private onBinary(chunk: Uint8Array): void {
    if (!this.attachedHere) {
      console.warn('websh: output before attached, ignored');
      return;
    }
    const at = this.rxAt;
    this.rxAt += chunk.length;
    if (at > this.received) {
      // Bytes between received and at will never come: say so and go on.
      this.h.gap?.(this.received, at);
      this.received = at;
    }
    const skip = Math.min(this.received - at, chunk.length);
    const fresh = skip > 0 ? chunk.subarray(skip) : chunk;
    if (fresh.length === 0) return;
    this.received += fresh.length;
    const end = this.received;
    this.h.output(fresh, () => {
      if (end > this.consumed) this.consumed = end;
      this.ack(false);
    });
  }

  private ack(now: boolean): void {
    if (this.consumed === this.lastAck) return;
    if (now || this.consumed - this.lastAck >= ACK_BYTES) {
      clearTimeout(this.ackTimer);
      this.ackTimer = undefined;
      if (this.sendJson({ type: 'ack', offset: this.consumed })) this.lastAck = this.consumed;
    } else if (this.ackTimer === undefined) {
      this.ackTimer = window.setTimeout(() => {
        this.ackTimer = undefined;
        this.ack(true);
      }, ACK_DELAY_MS);
    }
  }

  private end(how: { code?: number; reason?: string }): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.retryTimer);
    this.ack(true);
    this.setState('ended', how.code !== undefined ? `Session ended (exit code ${how.code}).` : `Session closed: ${how.reason ?? ''}`);
    this.h.ended(how);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      this.detachSocket(ws);
    }
  }

  private onSocketGone(code: number, reason: string): void {
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    if (this.disposed || this.ended) return;
    if (!this.attachedHere) {
      this.failures++;
      if (reason) this.lastError = reason;
      void this.probe();
    }
    this.attachedHere = false;
    this.scheduleReconnect(code);
  }

  private scheduleReconnect(code?: number): void {
    if (this.disposed || this.ended) return;
    const n = this.failures;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** n);
    const delay = n === 0 ? BACKOFF_MIN_MS * (0.5 + Math.random()) : base * (0.5 + Math.random() / 2);
    const why = this.lastError ? ` (${this.lastError})` : code && code !== 1006 ? ` (code ${code})` : '';
    const offline = navigator.onLine === false ? ' You are offline.' : '';
    this.setState('reconnecting', `Connection lost${why}.${offline} Reconnecting…`);
    clearTimeout(this.retryTimer);
    this.retryTimer = window.setTimeout(() => this.connect(), delay);
  }

  /** After a connection that never attached: is the session still there? */
  private async probe(): Promise<void> {
    try {
      const s = await getSession(this.sessionId);
      if (!sessionIsLive(s)) {
        this.end(typeof s.exit_code === 'number' ? { code: s.exit_code } : { reason: s.close_reason || s.status || 'closed' });
      }
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 403)) this.end({ reason: e.message });
      /* otherwise (network, 5xx) keep retrying */
    }
  }

  private onOnline = (): void => {
    if (this.state === 'reconnecting' && !this.ws) this.connect();
  };
}

function randomId(): string {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b);
  return 'web-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}
