// One work session: what was asked and decided, what you may do with it,
// and its timeline (request, approval, activation, sudo, every terminal,
// command and transfer done in it, the end), refreshed while you look.

import {
  errorText,
  getUsername,
  isAdmin,
  whoami,
  workSessionTimeline,
  workSessionInUse,
  WORK_SESSION_EVENT,
  type TimelineItem,
  type WorkSession,
} from '../api';
import type { Page } from '../main';
import { bytes, dateTime, h, poll, shortId } from '../ui';
import { actionButtons, seconds, statusPill, syncInUse, whenText } from '../worksession';


const str = (v: unknown): string => (typeof v === 'string' ? v : typeof v === 'number' ? String(v) : '');
const obj = (v: unknown): Record<string, unknown> => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {});

const EVENT_LABEL: Record<string, string> = {
  'work_session.request': 'Requested',
  'work_session.approve': 'Approved',
  'work_session.reject': 'Rejected',
  'work_session.activate': 'Became active',
  'work_session.cancelled': 'Cancelled',
  'work_session.completed': 'Completed',
  'work_session.expired': 'Expired',
  'work_session.revoked': 'Revoked',
  'work_session.extend_request': 'More time asked for',
  'work_session.extend': 'Extended',
  'work_session.extend_reject': 'Extension refused',
  'sudo.grant': 'Sudo granted',
  'sudo.use': 'Sudo used',
  'sudo.revoke': 'Sudo withdrawn',
};

/** One line about an audit event: what happened, by whom, the detail that matters. */
type EventItem = Extract<TimelineItem, { kind: 'event' }>;

function eventBody(it: EventItem): (Node | string)[] {
  const action = str(it.action);
  const d = obj(it.detail);
  const user = str(it.user);
  const server = str(it.server_name);
  const out: (Node | string)[] = [h('strong', {}, EVENT_LABEL[action] ?? action)];
  if (it.result && it.result !== 'success' && it.result !== 'ok') out.push(' ', h('span', { class: 'pill pill-ended' }, str(it.result)));
  if (user) out.push(` by ${user}`);
  if (server) out.push(` on ${server}`);
  const extra: string[] = [];
  if (action === 'work_session.request') {
    if (d.purpose) extra.push(`“${str(d.purpose)}”`);
    if (Array.isArray(d.scopes)) extra.push(d.scopes.map(str).join(', '));
    if (d.duration_seconds) extra.push(seconds(Number(d.duration_seconds)));
  } else if (action === 'work_session.approve') {
    if (d.automatic) extra.push('automatically (policy)');
    const adj = obj(d.adjusted);
    if (Object.keys(adj).length) extra.push(`adjusted: ${JSON.stringify(adj)}`);
    if (d.note) extra.push(`“${str(d.note)}”`);
  } else if (action === 'work_session.activate') {
    if (d.expires_at) extra.push(`until ${dateTime(str(d.expires_at))}`);
  } else if (action === 'work_session.extend_request' || action === 'work_session.extend') {
    if (d.seconds) extra.push(`+${seconds(Number(d.seconds))}`);
  } else if (action === 'sudo.use') {
    if (d.entry) extra.push(str(d.entry));
  } else if (action === 'sudo.grant') {
    if (Array.isArray(d.commands) && d.commands.length) extra.push(d.commands.map(str).join(', '));
    if (d.error) extra.push(str(d.error));
  } else {
    for (const k of ['reason', 'note', 'refusal']) if (d[k]) extra.push(str(d[k]));
  }
  if (extra.length) out.push(h('div', { class: 'muted small tl-detail' }, extra.join(' · ')));
  return out;
}

function itemBody(it: TimelineItem): (Node | string | null)[] {
  if (it.kind === 'event') return eventBody(it);
  const server = str(it.server_name);
  const user = str(it.username);
  switch (it.kind) {
    case 'terminal': {
      const id = str(it.id);
      const live = it.status !== 'closed' && !it.closed_at;
      const how = typeof it.exit_code === 'number' ? `exit ${it.exit_code}` : str(it.close_reason) || str(it.status);
      return [
        h('strong', {}, 'Terminal'),
        ` on ${server || '?'} as ${user}`,
        ' ',
        h('span', { class: `pill ${live ? 'pill-attached' : 'pill-ended'}` }, live ? 'live' : how),
        ' ',
        live ? h('a', { class: 'btn btn-ghost btn-sm', href: `#/sessions/${encodeURIComponent(id)}` }, 'Attach') : null,
        h('a', { class: 'btn btn-ghost btn-sm tl-replay', href: `#/sessions/${encodeURIComponent(id)}/replay` }, 'Replay'),
      ];
    }
    case 'command': {
      const res = typeof it.exit_code === 'number' ? `exit ${it.exit_code}` : str(it.error) || str(it.status);
      return [h('strong', {}, 'Command'), ` on ${server || '?'} as ${user} `, h('code', {}, str(it.line)), ' ', h('span', { class: 'muted small' }, res)];
    }
    case 'transfer': {
      const dir = it.direction === 'upload' ? 'Upload to' : it.direction === 'download' ? 'Download from' : `${str(it.direction)}:`;
      return [
        h('strong', {}, 'File'),
        ` ${dir} ${server || '?'} `,
        h('code', {}, str(it.path)),
        ` as ${user} · ${str(it.status)}`,
        typeof it.bytes === 'number' ? ` · ${bytes(it.bytes)}` : '',
      ];
    }
  }
}

export const workSessionPage: Page = (ctx) => {
  const id = ctx.params[0];
  ctx.title('Work session');
  const me = getUsername();
  let admin = false;

  const status = h('div', { class: 'alert alert-error', role: 'alert', id: 'ws-error', hidden: true });
  const title = h('h1', { class: 'ws-title' }, 'Work session');
  const pillSlot = h('span');
  const actions = h('div', { class: 'ws-actions', id: 'ws-detail-actions' });
  const facts = h('dl', { class: 'facts', id: 'ws-facts' });
  const list = h('ol', { class: 'timeline', id: 'ws-timeline' }, h('li', { class: 'muted' }, 'Loading…'));
  ctx.main.append(
    h('div', { class: 'page-head' }, h('a', { class: 'back', href: '#/work-sessions', 'aria-label': 'Back to work sessions' }, '←'), title, pillSlot, h('div', { class: 'spacer' }), actions),
    status,
    h('div', { class: 'card' }, facts),
    h('h2', { class: 'section-title' }, 'Timeline'),
    h('div', { class: 'card' }, list),
  );

  const fail = (msg: string) => {
    status.textContent = msg;
    status.hidden = false;
  };
  const fact = (k: string, v: Node | string | null | undefined) =>
    v ? [h('dt', {}, k), h('dd', {}, v)] : [];

  const draw = (ws: WorkSession, items: TimelineItem[]) => {
    title.textContent = ws.purpose;
    ctx.title(`Work session ${shortId(ws.id)}`);
    pillSlot.replaceChildren(statusPill(ws));
    const inUse = workSessionInUse()?.id === ws.id;
    actions.replaceChildren(
      ...actionButtons({
        ws,
        me,
        admin,
        fail,
        done: () => {
          status.hidden = true;
          updates.refresh();
        },
      }),
    );
    facts.replaceChildren(
      ...fact('Session', h('span', { class: 'mono' }, ws.id)),
      ...fact('Requester', ws.requester),
      ...fact('Servers', ws.servers.map((s) => s.name || s.id).join(', ')),
      ...fact('Access', ws.scopes.join(', ') + (ws.sudo_commands?.length ? ` (sudo: ${ws.sudo_commands.join(', ')})` : '')),
      ...fact('Duration', seconds(ws.duration_seconds)),
      ...fact('When', whenText(ws)),
      ...fact('Activated', dateTime(ws.activated_at)),
      ...fact('Decided', ws.decided_by ? `${ws.decided_by}, ${dateTime(ws.decided_at)}${ws.decision_note ? ` — ${ws.decision_note}` : ''}` : ''),
      ...fact('Extension asked', ws.extension_requested_seconds ? `+${seconds(ws.extension_requested_seconds)}` : ''),
      ...fact('Ended', ws.end_reason ? `${dateTime(ws.ended_at)} — ${ws.end_reason}` : ''),
      ...fact('In this tab', inUse ? 'in use: terminals you open carry this session' : ''),
    );
    list.replaceChildren(
      ...(items.length
        ? items.map((it) =>
            h(
              'li',
              { class: `tl tl-${str(it.kind)}`, 'data-kind': str(it.kind), 'data-action': it.kind === 'event' ? str(it.action) : null, 'data-id': it.kind !== 'event' ? str(it.id) : null },
              h('time', { class: 'muted small', datetime: it.timestamp, title: it.timestamp }, dateTime(it.timestamp)),
              h('div', { class: 'tl-body' }, itemBody(it)),
            ),
          )
        : [h('li', { class: 'muted' }, 'Nothing yet.')]),
    );
  };

  const updates = poll(
    async (signal) => {
      const r = await workSessionTimeline(id, signal);
      syncInUse([r.session]);
      draw(r.session, r.results);
    },
    (e) => {
      fail(errorText(e));
      if (list.querySelector('li.muted')) list.replaceChildren();
    },
  );
  const onUse = () => updates.refresh();
  window.addEventListener(WORK_SESSION_EVENT, onUse);
  whoami()
    .then((w) => (admin = isAdmin(w)))
    .catch(() => {})
    .finally(() => updates.refresh());

  return () => {
    updates.stop();
    window.removeEventListener(WORK_SESSION_EVENT, onUse);
  };
};
