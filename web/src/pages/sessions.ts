import { errorText, listSessions, sessionIsLive, sessionServerName, sessionUser, type WebshSession } from '../api';
import type { Page } from '../main';
import { ago, bytes, dateTime, dot, h, pager, poll, shortId } from '../ui';

export const sessionsPage: Page = (ctx) => {
  ctx.title('Sessions');
  let page = Math.max(1, Number(ctx.query.get('page')) || 1);
  const status = h('div', { class: 'alert alert-error', role: 'alert', hidden: true });
  const count = h('span', { class: 'muted' });
  const tbody = h('tbody', {}, h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'Loading…')));
  const table = h(
    'table',
    { class: 'table sessions', id: 'sessions' },
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Session'), h('th', { scope: 'col' }, 'Started'), h('th', { scope: 'col' }, 'State'), h('th', { scope: 'col' }, 'Output'), h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Actions')))),
    tbody,
  );
  const empty = h('div', { class: 'empty', hidden: true }, h('p', {}, 'No terminal sessions yet.'), h('p', { class: 'muted' }, 'Open one from ', h('a', { href: '#/servers' }, 'Servers'), '.'));
  const pages = pager((d) => {
    page = Math.max(1, page + d);
    updates.refresh();
  });
  ctx.main.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'Sessions'), count),
    h('p', { class: 'muted small' }, 'Every terminal session is recorded. Live sessions keep running when you close the page; attach again from here.'),
    status,
    h('div', { class: 'card card-flush' }, table, empty),
    pages.el,
  );

  const stateCell = (s: WebshSession) => {
    if (sessionIsLive(s)) return h('td', { 'data-label': 'State' }, dot('ok', 'live'), ' live');
    const how = typeof s.exit_code === 'number' ? `exit ${s.exit_code}` : s.close_reason || s.status || 'closed';
    return h('td', { 'data-label': 'State', title: dateTime(s.closed_at) }, dot('off', 'ended'), ' ', how);
  };
  const row = (s: WebshSession) => {
    const live = sessionIsLive(s);
    const id = encodeURIComponent(s.id);
    const server = sessionServerName(s);
    const user = sessionUser(s);
    return h(
      'tr',
      { 'data-id': s.id, 'data-live': String(live) },
      h('td', { class: 'cell-name' }, h('div', {}, h('div', { class: 'name' }, server || '—'), h('div', { class: 'muted small mono' }, shortId(s.id), user ? ` · ${user}` : ''))),
      h('td', { 'data-label': 'Started', title: dateTime(s.created_at) }, ago(s.created_at)),
      stateCell(s),
      h('td', { 'data-label': 'Output' }, s.output_bytes !== undefined ? bytes(s.output_bytes) : '—'),
      h(
        'td',
        { class: 'cell-actions' },
        live ? h('a', { class: 'btn btn-primary btn-sm attach', href: `#/sessions/${id}` }, 'Attach') : null,
        h('a', { class: 'btn btn-ghost btn-sm replay', href: `#/sessions/${id}/replay` }, 'Replay'),
      ),
    );
  };

  const updates = poll(
    async (signal) => {
      const r = await listSessions(page, signal);
      status.hidden = true;
      tbody.replaceChildren(...r.results.map(row));
      table.hidden = r.results.length === 0;
      empty.hidden = r.results.length !== 0;
      count.textContent = r.count ? `${r.count} in all` : '';
      pages.show(r);
    },
    (e) => {
      status.textContent = errorText(e);
      status.hidden = false;
      if (tbody.querySelector('td[colspan]')) tbody.replaceChildren();
    },
  );
  updates.refresh();
  return updates.stop;
};
