// The console: a hash-routed single page.
//   #/login                 sign in
//   #/servers               servers (default)
//   #/servers/ID/terminal   opens a new terminal on server ID
//   #/sessions              terminal sessions and their recordings
//   #/sessions/ID           a live terminal (reloading re-attaches)
//   #/sessions/ID/replay    the recording of session ID
//   #/work-sessions         work sessions: list, request form (?server=NAME)
//   #/work-sessions/policy  the work-session policy (admins change it)
//   #/work-sessions/ID      one work session and its timeline

import '@xterm/xterm/css/xterm.css';
import './style.css';

import {
  clearSession,
  getKey,
  getUsername,
  logout,
  setUnauthorizedHandler,
  setWorkSessionInUse,
  workSessionInUse,
  WORK_SESSION_EVENT,
} from './api';
import { loginPage } from './pages/login';
import { replayPage } from './pages/replay';
import { serversPage } from './pages/servers';
import { sessionsPage } from './pages/sessions';
import { terminalPage } from './pages/terminal';
import { workSessionPage } from './pages/worksession';
import { workSessionsPage } from './pages/worksessions';
import { workPolicyPage } from './pages/wspolicy';
import { navigate } from './nav';
import { dateTime, h, shortId } from './ui';

export interface PageContext {
  /** Where the page renders. */
  main: HTMLElement;
  params: string[];
  query: URLSearchParams;
  /** Set the document title ("X · Alpacon"). */
  title(t: string): void;
}

/** A page renders into ctx.main and returns its clean-up (timers, sockets). */
export type Page = (ctx: PageContext) => (() => void) | void;

interface Route {
  pattern: RegExp;
  page: Page;
  nav?: string;
  public?: boolean;
  /** Full-bleed layout (the terminal). */
  wide?: boolean;
}

const routes: Route[] = [
  { pattern: /^\/login$/, page: loginPage, public: true },
  { pattern: /^\/servers$/, page: serversPage, nav: 'servers' },
  { pattern: /^\/servers\/([^/]+)\/terminal$/, page: terminalPage, nav: 'servers', wide: true },
  { pattern: /^\/sessions$/, page: sessionsPage, nav: 'sessions' },
  { pattern: /^\/sessions\/([^/]+)$/, page: terminalPage, nav: 'sessions', wide: true },
  { pattern: /^\/sessions\/([^/]+)\/replay$/, page: replayPage, nav: 'sessions', wide: true },
  { pattern: /^\/work-sessions$/, page: workSessionsPage, nav: 'work' },
  { pattern: /^\/work-sessions\/policy$/, page: workPolicyPage, nav: 'work' },
  { pattern: /^\/work-sessions\/([^/]+)$/, page: workSessionPage, nav: 'work' },
];

const app = document.getElementById('app')!;
let cleanup: (() => void) | void;

function parseHash(): { path: string; query: URLSearchParams } {
  const raw = location.hash.replace(/^#/, '') || '/servers';
  const [path, qs] = raw.split('?', 2);
  return { path: path || '/servers', query: new URLSearchParams(qs ?? '') };
}

/** The work session this tab's terminals open in, with a way to stop. */
const chipSlot = h('div', { class: 'ws-chip-slot' });
function drawWorkSessionChip(): void {
  const ws = workSessionInUse();
  if (!ws) {
    chipSlot.replaceChildren();
    return;
  }
  const until = ws.expires_at ? `, until ${dateTime(ws.expires_at)}` : '';
  chipSlot.replaceChildren(
    h(
      'div',
      { class: 'ws-chip', id: 'ws-in-use', 'data-id': ws.id, role: 'status' },
      h(
        'a',
        {
          href: `#/work-sessions/${encodeURIComponent(ws.id)}`,
          class: 'ws-chip-link',
          title: `Terminals you open run in work session ${shortId(ws.id)}: ${ws.purpose} (${ws.servers.join(', ')}${until})`,
        },
        h('span', { class: 'dot dot-ok', 'aria-hidden': 'true' }),
        h('span', { class: 'ws-chip-label' }, 'Work session'),
        h('span', { class: 'ws-chip-purpose' }, ws.purpose),
      ),
      h(
        'button',
        {
          class: 'ws-chip-stop',
          type: 'button',
          id: 'ws-stop',
          title: 'Stop using this work session',
          'aria-label': 'Stop using this work session',
          onclick: () => setWorkSessionInUse(null),
        },
        '×',
      ),
    ),
  );
}
window.addEventListener(WORK_SESSION_EVENT, drawWorkSessionChip);

function topbar(active: string | undefined): HTMLElement {
  const link = (id: string, href: string, text: string, short?: string) =>
    h(
      'a',
      {
        href,
        class: 'nav-link' + (active === id ? ' active' : ''),
        'aria-current': active === id ? 'page' : null,
        'aria-label': short ? text : null,
        'data-nav': id,
      },
      short ? [h('span', { class: 'nav-long' }, text), h('span', { class: 'nav-short', 'aria-hidden': 'true' }, short)] : text,
    );
  drawWorkSessionChip();
  const user = getUsername();
  return h(
    'header',
    { class: 'topbar' },
    h('a', { class: 'brand', href: '#/servers', 'aria-label': 'Alpacon home' }, h('span', { class: 'brand-mark' }, '>_'), h('span', { class: 'brand-name' }, 'Alpacon')),
    h('nav', { class: 'nav' }, link('servers', '#/servers', 'Servers'), link('sessions', '#/sessions', 'Sessions'), link('work', '#/work-sessions', 'Work sessions', 'Work')),
    h(
      'div',
      { class: 'topbar-right' },
      chipSlot,
      user ? h('span', { class: 'user', title: `Signed in as ${user}` }, user) : null,
      h(
        'button',
        {
          class: 'btn btn-ghost btn-sm',
          type: 'button',
          id: 'logout',
          onclick: async () => {
            try {
              await logout();
            } catch {
              /* the key is dropped locally whatever the gateway says */
            }
            navigate('#/login');
          },
        },
        'Log out',
      ),
    ),
  );
}

function render(): void {
  if (cleanup) {
    try {
      cleanup();
    } catch (e) {
      console.error(e);
    }
    cleanup = undefined;
  }
  const { path, query } = parseHash();
  const route = routes.find((r) => r.pattern.test(path));
  if (!route) {
    navigate('#/servers', true);
    return;
  }
  if (!route.public && !getKey()) {
    const next = location.hash && !location.hash.startsWith('#/login') ? location.hash : '';
    navigate('#/login' + (next ? '?next=' + encodeURIComponent(next) : ''), true);
    return;
  }
  if (route.public && path === '/login' && getKey()) {
    navigate('#/servers', true);
    return;
  }
  const params = route.pattern.exec(path)!.slice(1).map(decodeURIComponent);
  app.replaceChildren();
  document.body.classList.toggle('wide', !!route.wide);
  const main = h('main', { class: 'main' + (route.wide ? ' main-wide' : ''), id: 'main' });
  if (!route.public) app.appendChild(topbar(route.nav));
  app.appendChild(main);
  const ctx: PageContext = {
    main,
    params,
    query,
    title: (t) => {
      document.title = t ? `${t} · Alpacon` : 'Alpacon';
    },
  };
  ctx.title('');
  cleanup = route.page(ctx);
}

setUnauthorizedHandler(() => {
  if (!getKey()) return;
  clearSession();
  const next = location.hash.startsWith('#/login') ? '' : location.hash;
  navigate('#/login?expired=1' + (next ? '&next=' + encodeURIComponent(next) : ''), true);
});

window.addEventListener('hashchange', render);
render();
