// The gateway's REST API, as the console uses it. The session key lives in
// sessionStorage: it goes away with the tab, and no other site can read it.

const KEY = 'alpacon.key';
const USER = 'alpacon.user';
const WORK_SESSION = 'alpacon.workSession';
const WHOAMI = 'alpacon.whoami';

import type { components } from './api.gen';

/** The API's schemas, generated from its OpenAPI document (api.gen.ts). */
type Schemas = components['schemas'];

export interface Page<T> {
  count: number;
  next: string | null;
  previous: string | null;
  results: T[];
}

export type Server = Schemas['Server'];

/** A terminal session. */
export type WebshSession = Schemas['WebshSession'];

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    detail: string,
  ) {
    super(detail);
  }
}

/** What to show a person for a failed call. */
export function errorText(e: unknown): string {
  return e instanceof ApiError ? e.message : String(e);
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
  sessionStorage.removeItem(WHOAMI);
}

export function clearSession(): void {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(USER);
  sessionStorage.removeItem(WORK_SESSION);
  sessionStorage.removeItem(WHOAMI);
  announceWorkSession();
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

export interface RequestOpts {
  signal?: AbortSignal;
  auth?: boolean;
  headers?: Record<string, string>;
}

export async function request(
  method: string,
  path: string,
  body?: unknown,
  opts: RequestOpts = {},
): Promise<Response> {
  const headers: Record<string, string> = { Accept: 'application/json', ...opts.headers };
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
  opts: RequestOpts = {},
): Promise<T> {
  const resp = await request(method, path, body, opts);
  if (resp.status === 204) return undefined as T;
  const text = await resp.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

/** A session, or the second step of the login (MFA). */
export type LoginResult = Schemas['LoginAnswer'];

export function login(username: string, password: string): Promise<LoginResult> {
  const body: Schemas['Login'] = { username, password };
  return api<LoginResult>('POST', '/api/auth/login/', body, { auth: false });
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

/** Opens a terminal; inside the work session in use, if any. */
export function createSession(req: Schemas['CreateWebshSession']): Promise<WebshSession> {
  return api<WebshSession>('POST', '/api/websh/sessions/', req, { headers: workSessionHeader() });
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
  const resp = await request('GET', `/api/websh/sessions/${encodeURIComponent(id)}/recording/`, undefined, {
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

export function sessionServerName(s: WebshSession): string {
  return s.server_name ?? s.server;
}

export function sessionServerId(s: WebshSession): string {
  return s.server;
}

export function sessionUser(s: WebshSession): string {
  return s.username;
}

/** Whether the session can still be attached to. */
export function sessionIsLive(s: WebshSession): boolean {
  return s.status === 'open';
}

// ---------------------------------------------------------------------------
// Who we are
// ---------------------------------------------------------------------------

export type Whoami = Schemas['WhoAmI'];

/** The signed-in user (cached for the tab's session). */
export async function whoami(signal?: AbortSignal): Promise<Whoami> {
  const cached = sessionStorage.getItem(WHOAMI);
  if (cached) {
    try {
      return JSON.parse(cached) as Whoami;
    } catch {
      /* fetch again */
    }
  }
  const w = await api<Whoami>('GET', '/api/auth/whoami/', undefined, { signal });
  sessionStorage.setItem(WHOAMI, JSON.stringify(w));
  return w;
}

export const isAdmin = (w: Whoami): boolean => !!(w.is_staff || w.is_superuser);

// ---------------------------------------------------------------------------
// Work sessions
// ---------------------------------------------------------------------------

export const SCOPES = ['websh', 'command', 'file', 'sudo', 'tunnel'] as const;
export type Scope = (typeof SCOPES)[number];

export type WorkStatus = Schemas['WorkSessionStatus'];

export type WorkSession = Schemas['WorkSession'];

/** One entry of a work session's timeline, tagged by `kind`. */
export type TimelineItem = Schemas['TimelineItem'];

export type WorkPolicy = Schemas['WorkSessionPolicy'];

const WS = '/api/work-sessions/sessions/';
const wsPath = (id: string, action = '') => `${WS}${encodeURIComponent(id)}/${action ? action + '/' : ''}`;

export function listWorkSessions(page: number, status: string, signal?: AbortSignal): Promise<Page<WorkSession>> {
  const q = new URLSearchParams({ page: String(page), page_size: '50' });
  if (status) q.set('status', status);
  return api<Page<WorkSession>>('GET', `${WS}?${q}`, undefined, { signal });
}

export function getWorkSession(id: string, signal?: AbortSignal): Promise<WorkSession> {
  return api<WorkSession>('GET', wsPath(id), undefined, { signal });
}

export function requestWorkSession(req: {
  purpose: string;
  servers: string[];
  scopes: string[];
  duration: string;
  starts_at?: string;
  sudo_commands?: string[];
}): Promise<WorkSession> {
  return api<WorkSession>('POST', WS, req);
}

export type WorkAction = 'approve' | 'reject' | 'cancel' | 'revoke' | 'complete' | 'extend' | 'approve-extension' | 'reject-extension';

export function workSessionAction(id: string, action: WorkAction, body?: Record<string, unknown>): Promise<WorkSession> {
  return api<WorkSession>('POST', wsPath(id, action), body);
}

export function workSessionTimeline(id: string, signal?: AbortSignal): Promise<Schemas['WorkSessionTimeline']> {
  return api('GET', wsPath(id, 'timeline'), undefined, { signal });
}

export function getWorkPolicy(signal?: AbortSignal): Promise<WorkPolicy> {
  return api<WorkPolicy>('GET', '/api/work-sessions/policy/', undefined, { signal });
}

export function putWorkPolicy(p: WorkPolicy): Promise<WorkPolicy> {
  return api<WorkPolicy>('PUT', '/api/work-sessions/policy/', p);
}

/** The work session this tab works in: later terminals open inside it. */
export interface WorkSessionInUse {
  id: string;
  purpose: string;
  servers: string[];
  expires_at: string | null;
}

export function workSessionInUse(): WorkSessionInUse | null {
  const raw = sessionStorage.getItem(WORK_SESSION);
  if (!raw) return null;
  try {
    const v = JSON.parse(raw) as WorkSessionInUse;
    return v && typeof v.id === 'string' ? v : null;
  } catch {
    return null;
  }
}

export function setWorkSessionInUse(ws: WorkSession | null): void {
  if (ws) {
    const v: WorkSessionInUse = {
      id: ws.id,
      purpose: ws.purpose,
      servers: ws.servers.map((s) => s.name || s.id),
      expires_at: ws.expires_at ?? null,
    };
    sessionStorage.setItem(WORK_SESSION, JSON.stringify(v));
  } else {
    sessionStorage.removeItem(WORK_SESSION);
  }
  announceWorkSession();
}

/** Fired on window when the work session in use changes. */
export const WORK_SESSION_EVENT = 'alpacon:work-session';

function announceWorkSession(): void {
  window.dispatchEvent(new Event(WORK_SESSION_EVENT));
}

function workSessionHeader(): Record<string, string> {
  const ws = workSessionInUse();
  return ws ? { 'X-Alpacon-Work-Session': ws.id } : {};
}

/** Refusals about work sessions (`work_session_required`, `_inactive`, …). */
export function isWorkSessionRefusal(e: unknown): e is ApiError {
  return e instanceof ApiError && e.status === 403 && e.code.startsWith('work_session_');
}
