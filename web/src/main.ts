// The console: a hash-routed single page.
//   #/login                 sign in
//   #/servers               servers (default)
//   #/servers/ID/terminal   opens a new terminal on server ID
//   #/sessions              terminal sessions and their recordings
//   #/sessions/ID           a live terminal (reloading re-attaches)
//   #/sessions/ID/replay    the recording of session ID

import '@xterm/xterm/css/xterm.css';
import './style.css';

import { clearSession, getKey, getUsername, logout, setUnauthorizedHandler } from './api';
import { loginPage } from './pages/login';
import { replayPage } from './pages/replay';
import { serversPage } from './pages/servers';
import { sessionsPage } from './pages/sessions';
import { terminalPage } from './pages/terminal';
import { navigate } from './nav';
import { h } from './ui';

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
];

const app = document.getElementById('app')!;
let cleanup: (() => void) | void;

function parseHash(): { path: string; query: URLSearchParams } {
  const raw = location.hash.replace(/^#/, '') || '/servers';
  const [path, qs] = raw.split('?', 2);
  return { path: path || '/servers', query: new URLSearchParams(qs ?? '') };
}

function topbar(active: string | undefined): HTMLElement {
  const link = (id: string, href: string, text: string) =>
    h('a', { href, class: 'nav-link' + (active === id ? ' active' : ''), 'aria-current': active === id ? 'page' : null }, text);
  const user = getUsername();
  return h(
    'header',
    { class: 'topbar' },
    h('a', { class: 'brand', href: '#/servers', 'aria-label': 'Alpacon home' }, h('span', { class: 'brand-mark' }, '>_'), h('span', { class: 'brand-name' }, 'Alpacon')),
    h('nav', { class: 'nav' }, link('servers', '#/servers', 'Servers'), link('sessions', '#/sessions', 'Sessions')),
    h(
      'div',
      { class: 'topbar-right' },
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
