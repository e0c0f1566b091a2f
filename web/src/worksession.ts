// What the work-session pages share: status labels, durations, and the
// actions that apply to a session for the signed-in user.

import {
  errorText,
  setWorkSessionInUse,
  workSessionAction,
  workSessionInUse,
  type WorkAction,
  type WorkPolicy,
  type WorkSession,
} from './api';
import { dateTime, h } from './ui';

/** "2 h", "90 min", "1 d 2 h". */
export function seconds(n: number | null | undefined): string {
  if (!n || n <= 0) return '';
  const d = Math.floor(n / 86400);
  const hh = Math.floor((n % 86400) / 3600);
  const m = Math.floor((n % 3600) / 60);
  const parts: string[] = [];
  if (d) parts.push(`${d} d`);
  if (hh) parts.push(`${hh} h`);
  if (m && !d) parts.push(`${m} min`);
  return parts.join(' ') || `${n} s`;
}

const PILL: Record<string, string> = {
  pending: 'pill-connecting',
  approved: 'pill-info',
  active: 'pill-attached',
};

export function statusPill(ws: WorkSession): HTMLElement {
  return h('span', { class: `pill ${PILL[ws.status] ?? 'pill-ended'} ws-status`, 'data-status': ws.status }, ws.status);
}

/** When it ends (active), would last (pending), or ended. */
export function whenText(ws: WorkSession): string {
  if (ws.status === 'active' && ws.expires_at) return `until ${dateTime(ws.expires_at)}`;
  if (ws.status === 'pending' || ws.status === 'approved') {
    const start = ws.starts_at ? `from ${dateTime(ws.starts_at)}, ` : '';
    return `${start}${seconds(ws.duration_seconds)}`;
  }
  if (ws.ended_at) return `ended ${dateTime(ws.ended_at)}`;
  return ws.expires_at ? dateTime(ws.expires_at) : '';
}

export interface ActionsOpts {
  ws: WorkSession;
  me: string;
  admin: boolean;
  /** Shows an error (the API's detail, e.g. `mfa_required`). */
  fail(message: string): void;
  /** Called after an action changed the session. */
  done(ws: WorkSession | null): void;
}

/** The buttons for what the signed-in user may do with `ws` now. */
export function actionButtons(o: ActionsOpts): HTMLElement[] {
  const { ws, me, admin } = o;
  const mine = ws.requester === me;
  const st = ws.status;
  const out: HTMLElement[] = [];
  const act = (
    action: WorkAction,
    label: string,
    cls: string,
    ask?: () => Record<string, unknown> | null | undefined,
  ) => {
    const b = h('button', { class: `btn btn-sm ${cls} ws-${action}`, type: 'button' }, label);
    b.addEventListener('click', async () => {
      let body: Record<string, unknown> | undefined;
      if (ask) {
        const v = ask();
        if (v === null) return; // the user backed out
        body = v;
      }
      b.disabled = true;
      try {
        const n = await workSessionAction(ws.id, action, body);
        if (['cancel', 'complete', 'revoke', 'reject'].includes(action) && workSessionInUse()?.id === ws.id) {
          setWorkSessionInUse(null);
        }
        o.done(n);
      } catch (e) {
        o.fail(errorText(e));
        b.disabled = false;
      }
    });
    out.push(b);
  };
  const reason = (q: string) => () => {
    const r = prompt(q, '');
    if (r === null) return null;
    return r.trim() ? { reason: r.trim() } : undefined;
  };

  const usable = st === 'active' || st === 'approved';
  if (mine && usable) {
    const inUse = workSessionInUse()?.id === ws.id;
    const b = h(
      'button',
      {
        class: `btn btn-sm ${inUse ? 'btn-ghost ws-stop-using' : 'btn-primary ws-use'}`,
        type: 'button',
        title: inUse ? 'Terminals you open no longer carry this session' : 'Open later terminals inside this work session',
      },
      inUse ? 'Stop using' : 'Use',
    );
    b.addEventListener('click', () => {
      setWorkSessionInUse(inUse ? null : ws);
      o.done(ws);
    });
    out.push(b);
  }
  if (admin && !mine && st === 'pending') {
    act('approve', 'Approve', 'btn-primary');
    act('reject', 'Reject', 'btn-danger', reason('Reject this request? Optionally say why:'));
  }
  if (admin && !mine && usable && ws.extension_requested_seconds) {
    act('approve-extension', `Approve +${seconds(ws.extension_requested_seconds)}`, 'btn-primary');
    act('reject-extension', 'Refuse extension', 'btn-ghost');
  }
  if (mine && usable && !ws.extension_requested_seconds) {
    act('extend', 'Extend', 'btn-ghost', () => {
      const d = prompt('Ask for how much more time? (e.g. 30m, 1h, 2h)', '1h');
      if (d === null || !d.trim()) return null;
      return { duration: d.trim() };
    });
  }
  if ((mine || admin) && st === 'active') {
    act('complete', 'Complete', 'btn-ghost', () =>
      confirm('Complete this work session? Terminals, commands and transfers opened in it end.') ? undefined : null,
    );
  }
  if (mine && (st === 'pending' || st === 'approved')) act('cancel', 'Cancel', 'btn-ghost');
  if (admin && usable) {
    act('revoke', 'Revoke', 'btn-danger', reason('Revoke this work session? Everything opened in it ends. Optionally say why:'));
  }
  return out;
}

export function policyText(p: WorkPolicy): string {
  const who =
    p.required_for === 'everyone'
      ? 'Everyone needs a work session to reach a server'
      : p.required_for === 'members'
        ? 'Members (not staff or superusers) need a work session to reach a server'
        : 'Work sessions are optional';
  const groups = p.required_groups.length ? `; servers in ${p.required_groups.join(', ')} always need one` : '';
  return `${who}${groups}. Sessions last at most ${p.max_duration_hours} h.`;
}

/** The request form, for one server. */
export function requestHref(server: string): string {
  return `#/work-sessions?server=${encodeURIComponent(server)}`;
}

/**
 * Keeps the session in use current with what the gateway says: forgotten
 * once it ended (rejected, expired, revoked…), its expiry updated after an
 * extension.
 */
export function syncInUse(seen: WorkSession[]): void {
  const cur = workSessionInUse();
  const ws = cur && seen.find((x) => x.id === cur.id);
  if (!ws) return;
  if (ws.status !== 'active' && ws.status !== 'approved') setWorkSessionInUse(null);
  else if ((ws.expires_at ?? null) !== cur.expires_at) setWorkSessionInUse(ws);
}
