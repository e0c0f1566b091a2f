import {
  ApiError,
  errorText,
  createSession,
  getServer,
  getSession,
  isWorkSessionRefusal,
  sessionServerName,
  sessionUser,
  setWorkSessionInUse,
  workSessionInUse,
} from '../api';
import type { Page } from '../main';
import { setHashQuietly } from '../nav';
import { bufferText, makeTerminal } from '../term';
import { h, shortId } from '../ui';
import { requestHref } from '../worksession';
import { WebshClient, type ConnState } from '../websh';

declare global {
  interface Window {
    /** For the browser tests and for debugging from the devtools console. */
    __alpacon?: { term: unknown; client: WebshClient | null; text(): string };
  }
}

const STATE_LABEL: Record<ConnState, string> = {
  connecting: 'Connecting',
  attached: 'Connected',
  reconnecting: 'Reconnecting',
  ended: 'Ended',
};

/** Keys a phone keyboard lacks. `ctrl` arms Ctrl for the next key. */
const KEYS: { label: string; title: string; seq?: string; ctrl?: true }[] = [
  { label: 'Esc', title: 'Escape', seq: '\x1b' },
  { label: 'Tab', title: 'Tab', seq: '\t' },
  { label: 'Ctrl', title: 'Ctrl + next key', ctrl: true },
  { label: '^C', title: 'Ctrl-C', seq: '\x03' },
  { label: '^D', title: 'Ctrl-D', seq: '\x04' },
  { label: '↑', title: 'Up', seq: '\x1b[A' },
  { label: '↓', title: 'Down', seq: '\x1b[B' },
  { label: '←', title: 'Left', seq: '\x1b[D' },
  { label: '→', title: 'Right', seq: '\x1b[C' },
  { label: '|', title: 'Pipe', seq: '|' },
  { label: '~', title: 'Tilde', seq: '~' },
  { label: '/', title: 'Slash', seq: '/' },
];

export const terminalPage: Page = (ctx) => {
  const creating = location.hash.startsWith('#/servers/');
  const serverId = creating ? ctx.params[0] : '';
  let sessionId = creating ? '' : ctx.params[0];
  const runAs = ctx.query.get('username') ?? '';
  ctx.title('Terminal');

  const title = h('h1', { class: 'term-title' }, creating ? 'Opening terminal…' : 'Terminal');
  const sub = h('div', { class: 'muted small term-sub' });
  const pill = h('span', { class: 'pill pill-connecting', id: 'conn-state', role: 'status' }, 'Connecting');
  const banner = h('div', { class: 'term-banner', id: 'term-banner', role: 'status', hidden: true });
  const bannerText = h('span');
  const bannerActions = h('span', { class: 'banner-actions' });
  banner.append(bannerText, bannerActions);
  const endBtn = h('button', { class: 'btn btn-danger btn-sm', type: 'button', id: 'end-session', disabled: true }, 'End session');
  const detachLink = h('a', { class: 'btn btn-ghost btn-sm', href: '#/sessions', title: 'Leave the session running' }, 'Detach');
  const head = h(
    'div',
    { class: 'term-head' },
    h('a', { class: 'back', href: '#/servers', 'aria-label': 'Back to servers' }, '←'),
    h('div', { class: 'term-heading' }, title, sub),
    h('div', { class: 'term-actions' }, pill, detachLink, endBtn),
  );
  const screen = h('div', { class: 'term-screen', id: 'terminal' });
  const keybar = h('div', { class: 'keybar', role: 'toolbar', 'aria-label': 'Extra keys' });
  const wrap = h('div', { class: 'term-wrap' }, banner, screen);
  ctx.main.append(head, wrap, keybar);

  const { term, fit } = makeTerminal();
  term.open(screen);
  const safeFit = () => {
    if (screen.clientWidth === 0 || screen.clientHeight === 0) return;
    try {
      fit.fit();
    } catch {
      /* not laid out yet */
    }
  };
  safeFit();

  let client: WebshClient | null = null;
  let disposed = false;
  const enc = new TextEncoder();
  let ctrlArmed = false;
  const ctrlBtn = h('button', { class: 'key', type: 'button', title: 'Ctrl + next key', 'aria-pressed': 'false' }, 'Ctrl');
  const setCtrl = (on: boolean) => {
    ctrlArmed = on;
    ctrlBtn.setAttribute('aria-pressed', String(on));
    ctrlBtn.classList.toggle('armed', on);
  };
  const send = (s: string) => client?.sendInput(enc.encode(s));
  for (const k of KEYS) {
    const b = k.ctrl ? ctrlBtn : h('button', { class: 'key', type: 'button', title: k.title }, k.label);
    // Keep the focus (and the phone keyboard) on the terminal.
    b.addEventListener('pointerdown', (e) => e.preventDefault());
    b.addEventListener('click', () => {
      if (k.ctrl) setCtrl(!ctrlArmed);
      else {
        send(k.seq!);
        setCtrl(false);
      }
      term.focus();
    });
    keybar.appendChild(b);
  }

  term.onData((d) => {
    if (ctrlArmed && d.length === 1) {
      const c = d.toUpperCase().charCodeAt(0);
      setCtrl(false);
      if (c >= 0x40 && c <= 0x5f) {
        send(String.fromCharCode(c & 0x1f));
        return;
      }
    }
    send(d);
  });
  term.onBinary((d) => {
    const b = new Uint8Array(d.length);
    for (let i = 0; i < d.length; i++) b[i] = d.charCodeAt(i) & 0xff;
    client?.sendInput(b);
  });
  term.onResize(({ rows, cols }) => client?.resize(rows, cols));

  let fitQueued = false;
  const ro = new ResizeObserver(() => {
    if (fitQueued) return;
    fitQueued = true;
    requestAnimationFrame(() => {
      fitQueued = false;
      if (!disposed) safeFit();
    });
  });
  ro.observe(screen);
  const onWinResize = () => safeFit();
  window.addEventListener('resize', onWinResize);

  const showBanner = (text: string, kind: 'warn' | 'error' | 'info', actions: HTMLElement[] = []) => {
    banner.className = `term-banner term-banner-${kind}`;
    bannerText.textContent = text;
    bannerActions.replaceChildren(...actions);
    banner.hidden = false;
  };
  const hideBanner = () => {
    banner.hidden = true;
  };
  let agentOffline = false;

  window.__alpacon = { term, client: null, text: () => bufferText(term) };

  const start = (id: string) => {
    sessionId = id;
    const ws = workSessionInUse();
    sub.textContent = `session ${shortId(id)}${runAs ? ` · as ${runAs}` : ''}${creating && ws ? ` · work session ${shortId(ws.id)}` : ''}`;
    endBtn.disabled = false;
    client = new WebshClient(id, {
      output: (data, done) => term.write(data, done),
      state: (s, detail) => {
        pill.textContent = STATE_LABEL[s];
        pill.className = `pill pill-${s}`;
        if (s === 'attached') {
          if (agentOffline) showBanner('The server is offline. The session resumes when its agent reconnects.', 'warn');
          else hideBanner();
        } else if (s === 'reconnecting') {
          const now = h('button', { class: 'btn btn-sm btn-ghost', type: 'button', onclick: () => client?.drop() }, 'Retry now');
          showBanner(detail || 'Reconnecting…', 'warn', [now]);
        } else if (s === 'connecting') {
          hideBanner();
        }
      },
      attached: (msg) => {
        term.options.disableStdin = msg.read_only;
        if (msg.read_only) sub.textContent += ' · read-only';
        term.focus();
      },
      agentStatus: (connected) => {
        agentOffline = !connected;
        if (!connected) showBanner('The server is offline. The session resumes when its agent reconnects.', 'warn');
        else if (client?.state === 'attached') hideBanner();
      },
      gap: (from, to) => {
        term.write(`\r\n\x1b[33m[${to - from} bytes of output are no longer available]\x1b[0m\r\n`);
      },
      ended: (how) => {
        const line = how.code !== undefined ? `[session ended: code ${how.code}]` : `[session closed${how.reason ? `: ${how.reason}` : ''}]`;
        term.write(`\r\n\x1b[2m${line}\x1b[0m\r\n\x1b[?25l`);
        term.options.disableStdin = true;
        term.options.cursorBlink = false;
        endBtn.disabled = true;
        detachLink.hidden = true;
        const replay = h('a', { class: 'btn btn-sm btn-ghost', href: `#/sessions/${encodeURIComponent(id)}/replay` }, 'Replay');
        const back = h('a', { class: 'btn btn-sm btn-ghost', href: '#/servers' }, 'Servers');
        showBanner(line.slice(1, -1).replace(/^./, (c) => c.toUpperCase()), 'info', [replay, back]);
      },
    });
    window.__alpacon = { term, client, text: () => bufferText(term) };
    client.resize(term.rows, term.cols);
    client.connect();
  };

  endBtn.addEventListener('click', () => {
    if (!client || !confirm('End this session? The shell and its programs are hung up.')) return;
    client.closeSession();
  });

  const fail = (e: unknown) => {
    const msg = errorText(e);
    pill.textContent = 'Failed';
    pill.className = 'pill pill-ended';
    showBanner(msg, 'error', [h('a', { class: 'btn btn-sm btn-ghost', href: '#/servers' }, 'Back to servers')]);
  };

  /**
   * The gateway wants a (different) work session: say so plainly, with the
   * way to get one, instead of an empty terminal.
   */
  const refused = (e: ApiError, serverName: string) => {
    const inUse = workSessionInUse();
    pill.textContent = 'Refused';
    pill.className = 'pill pill-ended';
    endBtn.hidden = true;
    detachLink.hidden = true;
    wrap.hidden = true;
    keybar.hidden = true;
    const heading =
      e.code === 'work_session_required'
        ? `${serverName} needs a work session`
        : inUse
          ? `The work session in use does not give access to ${serverName}`
          : 'Work session refused';
    const actions: HTMLElement[] = [
      h('a', { class: 'btn btn-primary', id: 'request-work-session', href: requestHref(serverName) }, `Request a work session for ${serverName}`),
    ];
    if (inUse) {
      actions.push(
        h('a', { class: 'btn btn-ghost', href: `#/work-sessions/${encodeURIComponent(inUse.id)}` }, `Work session ${shortId(inUse.id)}`),
        h(
          'button',
          {
            class: 'btn btn-ghost',
            type: 'button',
            id: 'stop-work-session',
            onclick: (ev: Event) => {
              setWorkSessionInUse(null);
              (ev.currentTarget as HTMLButtonElement).disabled = true;
            },
          },
          'Stop using it',
        ),
      );
    }
    actions.push(h('a', { class: 'btn btn-ghost', href: '#/work-sessions' }, 'Your work sessions'));
    ctx.main.append(
      h(
        'section',
        { class: 'card refusal', id: 'work-session-refusal', role: 'alert', 'data-code': e.code },
        h('h2', {}, heading),
        h('p', { class: 'refusal-detail' }, e.message),
        h(
          'p',
          { class: 'muted small' },
          'Request a session with its purpose; once an admin approves it, press “Use” on it and open the terminal again.',
        ),
        h('div', { class: 'form-actions' }, actions),
      ),
    );
  };

  if (creating) {
    const serverName = getServer(serverId)
      .then((s) => {
        title.textContent = s.name;
        ctx.title(s.name);
        return s.name;
      })
      .catch(() => serverId);
    safeFit();
    createSession({ server: serverId, rows: term.rows, cols: term.cols, ...(runAs ? { username: runAs } : {}) })
      .then((s) => {
        if (disposed) return;
        setHashQuietly(`#/sessions/${encodeURIComponent(s.id)}`);
        start(s.id);
      })
      .catch(async (e) => {
        if (disposed) return;
        if (isWorkSessionRefusal(e)) {
          const name = await serverName;
          if (disposed) return;
          title.textContent = name;
          refused(e, name);
          return;
        }
        title.textContent = 'Could not open a terminal';
        fail(e);
      });
  } else {
    start(sessionId);
    getSession(sessionId)
      .then((s) => {
        const name = sessionServerName(s);
        if (name) {
          title.textContent = name;
          ctx.title(name);
        }
        const u = sessionUser(s);
        sub.textContent = `session ${shortId(s.id)}${u ? ` · as ${u}` : ''}`;
      })
      .catch(() => {});
  }

  return () => {
    disposed = true;
    client?.dispose();
    ro.disconnect();
    window.removeEventListener('resize', onWinResize);
    term.dispose();
    delete window.__alpacon;
  };
};
