// Work sessions: the list (yours, or everyone's for admins), the request
// form, and per session what you may do with it. `?server=NAME` opens the
// form for that server (the terminal page links here when a terminal was
// refused for want of a session).

import {
  errorText,
  getWorkPolicy,
  getUsername,
  isAdmin,
  listServers,
  listWorkSessions,
  requestWorkSession,
  SCOPES,
  whoami,
  workSessionInUse,
  WORK_SESSION_EVENT,
  type Server,
  type WorkSession,
} from '../api';
import type { Page } from '../main';
import { ago, dateTime, h, pager, poll, shortId } from '../ui';
import { actionButtons, policyText, seconds, statusPill, syncInUse, whenText } from '../worksession';

const STATUSES = ['', 'pending', 'approved', 'active', 'completed', 'expired', 'revoked', 'rejected', 'cancelled'];
const DURATIONS = ['30m', '1h', '2h', '4h', '8h', '12h', '1d'];
const SCOPE_HELP: Record<string, string> = {
  websh: 'terminals',
  command: 'commands',
  file: 'file transfers',
  sudo: 'sudo on the servers',
  tunnel: 'tunnels',
};

const hours = (d: string): number => {
  const n = parseFloat(d);
  return d.endsWith('d') ? n * 24 : d.endsWith('m') ? n / 60 : n;
};

export const workSessionsPage: Page = (ctx) => {
  ctx.title('Work sessions');
  const me = getUsername();
  let admin = false;
  let page = Math.max(1, Number(ctx.query.get('page')) || 1);
  let statusFilter = ctx.query.get('status') ?? '';
  const askedServer = ctx.query.get('server') ?? '';

  const status = h('div', { class: 'alert alert-error', role: 'alert', id: 'ws-error', hidden: true });
  const notice = h('div', { class: 'alert alert-info', role: 'status', id: 'ws-notice', hidden: true });
  const fail = (msg: string) => {
    notice.hidden = true;
    status.textContent = msg;
    status.hidden = false;
    status.scrollIntoView({ block: 'nearest' });
  };
  const tell = (msg: string) => {
    status.hidden = true;
    notice.textContent = msg;
    notice.hidden = false;
  };
  const count = h('span', { class: 'muted' });
  const policyNote = h('p', { class: 'muted small', id: 'ws-policy-note' }, '');
  const policyLink = h('a', { class: 'btn btn-ghost btn-sm', href: '#/work-sessions/policy', id: 'ws-policy-link', hidden: true }, 'Policy');
  const filter = h(
    'select',
    { class: 'filter', id: 'ws-filter', 'aria-label': 'Show sessions with status' },
    STATUSES.map((s) => h('option', { value: s, selected: s === statusFilter }, s ? s : 'all statuses')),
  );
  const newBtn = h('button', { class: 'btn btn-primary btn-sm', type: 'button', id: 'ws-new' }, 'Request a work session');

  // --- The request form ------------------------------------------------------
  const purpose = h('input', {
    id: 'ws-purpose',
    type: 'text',
    maxlength: 500,
    required: true,
    placeholder: 'e.g. INC-2384: restart auth-svc',
    autocomplete: 'off',
  });
  const serverBox = h('div', { class: 'checks', id: 'ws-servers' }, h('span', { class: 'muted small' }, 'Loading servers…'));
  const scopeBox = h(
    'div',
    { class: 'checks', id: 'ws-scopes' },
    SCOPES.map((s) =>
      h(
        'label',
        { class: 'check' },
        h('input', { type: 'checkbox', name: 'ws-scope', value: s, checked: s === 'websh' }),
        h('span', {}, s, ' ', h('span', { class: 'muted small' }, SCOPE_HELP[s])),
      ),
    ),
  );
  const duration = h(
    'select',
    { id: 'ws-duration' },
    DURATIONS.map((d) => h('option', { value: d, selected: d === '1h' }, d)),
  );
  const startsAt = h('input', { id: 'ws-starts-at', type: 'datetime-local', 'aria-describedby': 'ws-starts-help' });
  const sudoCmds = h('textarea', {
    id: 'ws-sudo-commands',
    rows: 2,
    placeholder: '/usr/bin/systemctl restart auth-svc',
    spellcheck: 'false',
  });
  const sudoField = h(
    'div',
    { hidden: true },
    h('label', { for: 'ws-sudo-commands' }, 'Sudo commands ', h('span', { class: 'muted small' }, 'one per line; leave empty for any command')),
    sudoCmds,
  );
  scopeBox.addEventListener('change', () => {
    sudoField.hidden = !scopeBox.querySelector<HTMLInputElement>('input[value="sudo"]')!.checked;
  });
  const submit = h('button', { class: 'btn btn-primary', type: 'submit', id: 'ws-submit' }, 'Request');
  const cancelForm = h('button', { class: 'btn btn-ghost', type: 'button' }, 'Close');
  const form = h(
    'form',
    { class: 'card ws-form', id: 'ws-request', novalidate: true, hidden: true },
    h('h2', {}, 'Request a work session'),
    h('p', { class: 'muted small' }, 'An admin approves it; its time starts when it becomes active. Then press “Use” and open terminals as usual.'),
    h('label', { for: 'ws-purpose' }, 'Purpose'),
    purpose,
    h('fieldset', {}, h('legend', {}, 'Servers'), serverBox),
    h('fieldset', {}, h('legend', {}, 'Access'), scopeBox),
    sudoField,
    h(
      'div',
      { class: 'form-row' },
      h('div', {}, h('label', { for: 'ws-duration' }, 'Duration'), duration),
      h('div', {}, h('label', { for: 'ws-starts-at' }, 'Start ', h('span', { class: 'muted small', id: 'ws-starts-help' }, 'empty: when approved')), startsAt),
    ),
    h('div', { class: 'form-actions' }, submit, cancelForm),
  );
  const openForm = () => {
    form.hidden = false;
    newBtn.hidden = true;
    purpose.focus();
  };
  newBtn.addEventListener('click', openForm);
  cancelForm.addEventListener('click', () => {
    form.hidden = true;
    newBtn.hidden = false;
  });

  const drawServers = (servers: Server[]) => {
    if (!servers.length) {
      serverBox.replaceChildren(h('span', { class: 'muted small' }, 'No servers within your reach.'));
      return;
    }
    serverBox.replaceChildren(
      ...servers.map((s) =>
        h(
          'label',
          { class: 'check' },
          h('input', { type: 'checkbox', name: 'ws-server', value: s.name, checked: s.name === askedServer || s.id === askedServer }),
          h('span', {}, s.name, s.is_connected ? '' : h('span', { class: 'muted small' }, ' offline')),
        ),
      ),
    );
  };

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const checked = (box: HTMLElement, name: string) =>
      [...box.querySelectorAll<HTMLInputElement>(`input[name="${name}"]:checked`)].map((i) => i.value);
    const servers = checked(serverBox, 'ws-server');
    const scopes = checked(scopeBox, 'ws-scope');
    const why = purpose.value.trim();
    if (!why) return fail('Say why you need access (the purpose).');
    if (!servers.length) return fail('Choose at least one server.');
    if (!scopes.length) return fail('Choose at least one kind of access.');
    const req: Parameters<typeof requestWorkSession>[0] = { purpose: why, servers, scopes, duration: duration.value };
    if (startsAt.value) {
      const t = new Date(startsAt.value);
      if (Number.isNaN(t.getTime())) return fail('The start time is not a valid date.');
      req.starts_at = t.toISOString();
    }
    if (scopes.includes('sudo')) {
      const cmds = sudoCmds.value.split('\n').map((l) => l.trim()).filter(Boolean);
      if (cmds.length) req.sudo_commands = cmds;
    }
    submit.disabled = true;
    try {
      const ws = await requestWorkSession(req);
      form.hidden = true;
      newBtn.hidden = false;
      purpose.value = '';
      tell(
        ws.status === 'pending'
          ? `Requested (${shortId(ws.id)}). An admin has to approve it; this list updates by itself.`
          : `Requested and ${ws.status} (${shortId(ws.id)}).`,
      );
      updates.refresh();
    } catch (e) {
      fail(errorText(e));
    } finally {
      submit.disabled = false;
    }
  });

  // --- The list ----------------------------------------------------------
  const tbody = h('tbody', {}, h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'Loading…')));
  const table = h(
    'table',
    { class: 'table work-sessions', id: 'work-sessions' },
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        h('th', { scope: 'col' }, 'Session'),
        h('th', { scope: 'col' }, 'Servers'),
        h('th', { scope: 'col' }, 'Access'),
        h('th', { scope: 'col' }, 'Status'),
        h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Actions')),
      ),
    ),
    tbody,
  );
  const empty = h('div', { class: 'empty', hidden: true }, h('p', {}, 'No work sessions.'));
  const pages = pager((d) => {
    page = Math.max(1, page + d);
    updates.refresh();
  });

  ctx.main.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Work sessions'), count, h('div', { class: 'spacer' }), filter, policyLink, newBtn),
    policyNote,
    status,
    notice,
    form,
    h('div', { class: 'card card-flush' }, table, empty),
    pages.el,
  );

  const row = (ws: WorkSession) => {
    const inUse = workSessionInUse()?.id === ws.id;
    const timeline = h('a', { class: 'btn btn-ghost btn-sm ws-timeline', href: `#/work-sessions/${encodeURIComponent(ws.id)}` }, 'Timeline');
    const buttons = actionButtons({
      ws,
      me,
      admin,
      fail,
      done: () => updates.refresh(),
    });
    return h(
      'tr',
      { 'data-id': ws.id, 'data-status': ws.status, 'data-requester': ws.requester, class: inUse ? 'in-use' : null },
      h(
        'td',
        { class: 'cell-name' },
        h('div', { class: 'name ws-purpose' }, ws.purpose),
        h('div', { class: 'muted small' }, h('span', { class: 'mono' }, shortId(ws.id)), ` · ${ws.requester} · `, h('span', { title: dateTime(ws.created_at) }, ago(ws.created_at)), inUse ? h('strong', { class: 'in-use-tag' }, ' · in use') : null),
      ),
      h('td', { 'data-label': 'Servers' }, ws.servers.map((s) => s.name || s.id).join(', ')),
      h('td', { 'data-label': 'Access' }, ws.scopes.join(', ')),
      h(
        'td',
        { 'data-label': 'Status' },
        statusPill(ws),
        ' ',
        h('span', { class: 'muted small' }, whenText(ws)),
        ws.extension_requested_seconds ? h('div', { class: 'small warn-text' }, `asks +${seconds(ws.extension_requested_seconds)}`) : null,
      ),
      h('td', { class: 'cell-actions' }, h('div', { class: 'ws-actions' }, buttons, timeline)),
    );
  };

  let listFailed = false;
  const updates = poll(
    async (signal) => {
      const r = await listWorkSessions(page, statusFilter, signal);
      if (listFailed) status.hidden = true;
      listFailed = false;
      syncInUse(r.results);
      tbody.replaceChildren(...r.results.map(row));
      table.hidden = r.results.length === 0;
      empty.hidden = r.results.length !== 0;
      count.textContent = r.count ? `${r.count} in all` : '';
      pages.show(r);
    },
    (e) => {
      fail(errorText(e));
      listFailed = true;
      if (tbody.querySelector('td[colspan]')) tbody.replaceChildren();
    },
  );
  filter.addEventListener('change', () => {
    statusFilter = filter.value;
    page = 1;
    updates.refresh();
  });
  const onUse = () => updates.refresh();
  window.addEventListener(WORK_SESSION_EVENT, onUse);
  const onVisible = () => {
    if (document.visibilityState === 'visible') updates.refresh();
  };
  document.addEventListener('visibilitychange', onVisible);

  // Who we are decides the actions; the policy what the form may ask for.
  const start = async () => {
    try {
      const w = await whoami();
      admin = isAdmin(w);
      policyLink.hidden = !admin;
    } catch {
      /* the list still shows; actions fall back to a requester's */
    }
    updates.refresh();
    getWorkPolicy()
      .then((p) => {
        policyNote.textContent = policyText(p);
        for (const o of duration.options) o.disabled = hours(o.value) > p.max_duration_hours;
        if (duration.selectedOptions[0]?.disabled) duration.value = DURATIONS.filter((d) => hours(d) <= p.max_duration_hours).pop() ?? '1h';
      })
      .catch(() => {});
    listServers()
      .then((r) => drawServers(r.results))
      .catch((e) => serverBox.replaceChildren(h('span', { class: 'muted small' }, errorText(e))));
  };
  if (askedServer) {
    openForm();
    tell(`Request a work session for ${askedServer}, then press “Use” once it is active and open the terminal again.`);
  }
  void start();

  return () => {
    updates.stop();
    window.removeEventListener(WORK_SESSION_EVENT, onUse);
    document.removeEventListener('visibilitychange', onVisible);
  };
};

