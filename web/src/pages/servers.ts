import { errorText, listServers, type Server } from '../api';
import type { Page } from '../main';
import { navigate } from '../nav';
import { ago, dateTime, dot, h, poll } from '../ui';

const RUN_AS = 'alpacon.runAs';

function osLabel(s: Server): string {
  const parts = [s.os, s.arch].filter(Boolean);
  return parts.join(' · ') || '—';
}

export const serversPage: Page = (ctx) => {
  ctx.title('Servers');
  const status = h('div', { class: 'alert alert-error', role: 'alert', hidden: true });
  const count = h('span', { class: 'muted', id: 'server-count' });
  const runAs = h('input', {
    id: 'run-as',
    type: 'text',
    placeholder: 'yourself',
    autocapitalize: 'none',
    spellcheck: 'false',
    autocomplete: 'off',
    value: localStorage.getItem(RUN_AS) ?? '',
    'aria-describedby': 'run-as-help',
  });
  runAs.addEventListener('change', () => localStorage.setItem(RUN_AS, runAs.value.trim()));
  const tbody = h('tbody', {}, h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'Loading…')));
  const table = h(
    'table',
    { class: 'table servers', id: 'servers' },
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Server'), h('th', { scope: 'col' }, 'Last seen'), h('th', { scope: 'col' }, 'System'), h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Actions')))),
    tbody,
  );
  const empty = h(
    'div',
    { class: 'empty', hidden: true },
    h('p', {}, 'No servers yet.'),
    h('p', { class: 'muted' }, 'Create a registration token with ', h('code', {}, 'alpacon server token create --name NAME'), ' and run the install line it prints on the server.'),
  );
  ctx.main.append(
    h(
      'div',
      { class: 'page-head' },
      h('h1', {}, 'Servers'),
      count,
      h('div', { class: 'spacer' }),
      h('label', { class: 'inline-field', for: 'run-as' }, h('span', {}, 'Run as'), runAs),
    ),
    h('p', { class: 'muted small', id: 'run-as-help' }, 'Terminals open as your own account unless you name another one you are allowed to use.'),
    status,
    h('div', { class: 'card card-flush' }, table, empty),
  );

  let lastServers: Server[] = [];
  const row = (s: Server) => {
    const openBtn = h(
      'button',
      {
        class: 'btn btn-primary btn-sm open-terminal',
        type: 'button',
        'data-server': s.name,
        disabled: !s.is_connected,
        title: s.is_connected ? `Open a terminal on ${s.name}` : `${s.name} is not connected`,
        onclick: () => {
          const u = runAs.value.trim();
          localStorage.setItem(RUN_AS, u);
          navigate(`#/servers/${encodeURIComponent(s.id)}/terminal${u ? '?username=' + encodeURIComponent(u) : ''}`);
        },
      },
      'Open terminal',
    );
    return h(
      'tr',
      { 'data-name': s.name, 'data-connected': String(s.is_connected) },
      h(
        'td',
        { class: 'cell-name' },
        h(
          'div',
          { class: 'name-wrap' },
          dot(s.is_connected ? 'ok' : 'off', s.is_connected ? 'connected' : 'disconnected'),
          h('div', {}, h('div', { class: 'name' }, s.name), h('div', { class: 'muted small' }, s.is_connected ? 'connected' : 'offline', s.remote_ip ? ` · ${s.remote_ip}` : '')),
        ),
      ),
      h('td', { 'data-label': 'Last seen', title: dateTime(s.last_seen_at) }, s.is_connected ? 'now' : ago(s.last_seen_at)),
      h('td', { 'data-label': 'System', title: [s.hostname, s.kernel].filter(Boolean).join(' · ') }, osLabel(s)),
      h('td', { class: 'cell-actions' }, openBtn),
    );
  };
  const draw = (servers: Server[]) => {
    lastServers = servers;
    tbody.replaceChildren(...servers.map(row));
    table.hidden = servers.length === 0;
    empty.hidden = servers.length !== 0;
    const online = servers.filter((s) => s.is_connected).length;
    count.textContent = servers.length ? `${online} of ${servers.length} connected` : '';
  };

  const updates = poll(
    async (signal) => {
      const page = await listServers(signal);
      status.hidden = true;
      draw(page.results);
    },
    (e) => {
      status.textContent = errorText(e);
      status.hidden = false;
      if (lastServers.length === 0) draw([]);
    },
  );
  const onVisible = () => {
    if (document.visibilityState === 'visible') updates.refresh();
  };
  document.addEventListener('visibilitychange', onVisible);
  updates.refresh();
  return () => {
    updates.stop();
    document.removeEventListener('visibilitychange', onVisible);
  };
};
