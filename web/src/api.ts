// The gateway's REST API, as the console uses it. The session key lives in
// sessionStorage: it goes away with the tab, and no other site can read it.

const KEY = 'alpacon.key';
const USER = 'alpacon.user';

export interface Page<T> {
  count: number;
  next: string | null;
  previous: string | null;
  results: T[];
}

export interface Server {
  id: string;
  name: string;
  is_connected: boolean;
  connected_at: string | null;
  last_seen_at: string | null;
  remote_ip: string | null;
  hostname: string;
  os: string;
  kernel: string;
  arch: string;
  cpus: number;
  memory_bytes: number;
  agent_version: string;
  created_at: string;
}

/** A terminal session. Only `id` is certain; the rest is read defensively. */
export interface WebshSession {
  id: string;
  server?: string | { id?: string; name?: string } | null;
  server_id?: string;
  server_name?: string;
  username?: string;
  user?: string | { username?: string } | null;
  owner?: string;
  status?: string;
  created_at?: string;
  closed_at?: string | null;
  exit_code?: number | null;
  close_reason?: string | null;
  rows?: number;
  cols?: number;
  output_bytes?: number;
  [k: string]: unknown;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    detail: string,
  ) {
    super(detail);
  }
}

export function getKey(): string | null {
  return sessionStorage.getItem(KEY);
}

export function getUsername(): string {
  return sessionStorage.getItem(USER) ?? '';
}

export function setSession(key: string, username: string): void {
  sessionStorage.setItem(KEY, key);
  sessionStorage.setItem(USER, username);
}

export function clearSession(): void {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(USER);
}

/** Called when the gateway no longer accepts our key (set by main). */
let onUnauthorized: () => void = () => {};
export function setUnauthorizedHandler(f: () => void): void {
  onUnauthorized = f;
}

async function errorFrom(resp: Response): Promise<ApiError> {
  let code = 'http_' + resp.status;
  let detail = `${resp.status} ${resp.statusText}`.trim();
  try {
    const v = await resp.json();
    if (v && typeof v === 'object') {
      if (typeof v.code === 'string') code = v.code;
      if (typeof v.detail === 'string') detail = v.detail;
    }
  } catch {
    /* not JSON: keep the status line */
  }
  return new ApiError(resp.status, code, detail);
}

export async function request(
  method: string,
  path: string,
  body?: unknown,
  opts: { signal?: AbortSignal; auth?: boolean } = {},
): Promise<Response> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  const key = getKey();
  if (opts.auth !== false && key) headers.Authorization = `Token ${key}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp: Response;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: opts.signal,
      cache: 'no-store',
    });
  } catch (e) {
    if ((e as Error).name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'The gateway cannot be reached. Check your connection.');
  }
  if (!resp.ok) {
    const err = await errorFrom(resp);
    if (resp.status === 401 && opts.auth !== false) onUnauthorized();
    throw err;
  }
  return resp;
}

export async function api<T>(
  method: string,
  path: string,
  body?: unknown,
  opts: { signal?: AbortSignal; auth?: boolean } = {},
): Promise<T> {
  const resp = await request(method, path, body, opts);
  if (resp.status === 204) return undefined as T;
  const text = await resp.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

export interface LoginResult {
  key: string;
  expires_at: string;
  user: { username?: string; [k: string]: unknown };
}

export function login(username: string, password: string): Promise<LoginResult> {
  return api<LoginResult>('POST', '/api/auth/login/', { username, password }, { auth: false });
}

export async function logout(): Promise<void> {
  try {
    await api('POST', '/api/auth/logout/');
  } finally {
    clearSession();
  }
}

export function listServers(signal?: AbortSignal): Promise<Page<Server>> {
  return api<Page<Server>>('GET', '/api/servers/servers/?page_size=100', undefined, { signal });
}

export function getServer(id: string, signal?: AbortSignal): Promise<Server> {
  return api<Server>('GET', `/api/servers/servers/${encodeURIComponent(id)}/`, undefined, { signal });
}

export function createSession(req: {
  server: string;
  rows: number;
  cols: number;
  username?: string;
}): Promise<WebshSession> {
  return api<WebshSession>('POST', '/api/websh/sessions/', req);
}

export function listSessions(page: number, signal?: AbortSignal): Promise<Page<WebshSession>> {
  return api<Page<WebshSession>>('GET', `/api/websh/sessions/?page=${page}&page_size=50`, undefined, {
    signal,
  });
}

export function getSession(id: string, signal?: AbortSignal): Promise<WebshSession> {
  return api<WebshSession>('GET', `/api/websh/sessions/${encodeURIComponent(id)}/`, undefined, { signal });
}

export async function getRecording(id: string, signal?: AbortSignal): Promise<string> {
  const resp = await request('GET', `/api/websh/sessions/${encodeURIComponent(id)}/recording`, undefined, {
    signal,
  });
  return resp.text();
}

/**
 * The terminal WebSocket's URL. Browsers cannot set headers on it, so the key
 * goes in `access_token`. `client` names this page's connection series: the
 * gateway counts input per client, so a reconnect learns how much of our
 * input arrived.
 */
export function sessionSocketUrl(id: string, offset: number, client: string): string {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const q = new URLSearchParams({ offset: String(offset), client, access_token: getKey() ?? '' });
  return `${proto}//${location.host}/api/websh/sessions/${encodeURIComponent(id)}/ws/?${q}`;
}

// Helpers to read session objects whatever their exact shape.
export function sessionServerName(s: WebshSession): string {
  if (typeof s.server_name === 'string' && s.server_name) return s.server_name;
  if (s.server && typeof s.server === 'object') return s.server.name ?? s.server.id ?? '';
  if (typeof s.server === 'string') return s.server;
  return s.server_id ?? '';
}

export function sessionServerId(s: WebshSession): string {
  if (s.server && typeof s.server === 'object') return s.server.id ?? '';
  if (typeof s.server_id === 'string') return s.server_id;
  if (typeof s.server === 'string') return s.server;
  return '';
}

export function sessionUser(s: WebshSession): string {
  if (typeof s.username === 'string') return s.username;
  if (s.user && typeof s.user === 'object') return s.user.username ?? '';
  if (typeof s.user === 'string') return s.user;
  return s.owner ?? '';
}

/** Whether the session can still be attached to. */
export function sessionIsLive(s: WebshSession): boolean {
  if (s.closed_at) return false;
  if (typeof s.exit_code === 'number') return false;
  const st = (s.status ?? '').toLowerCase();
  return !['closed', 'exited', 'ended', 'finished', 'terminated', 'expired', 'error'].includes(st);
}
