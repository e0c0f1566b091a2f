// Small DOM helpers: no framework, no innerHTML with data.

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | EventListener | null | undefined>;

/** `h('button', {class: 'btn', onclick: f}, 'Text')` */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v as EventListener);
    } else if (v === true) {
      el.setAttribute(k, '');
    } else {
      el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

export function append(el: Node, children: (Child | Child[])[]): void {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el: Node): void {
  while (el.firstChild) el.removeChild(el.firstChild);
}

/** "just now", "42 s ago", "5 min ago", "3 h ago", else a date. */
export function ago(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return 'never';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  const s = Math.round((now - t) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return dateTime(iso);
}

export function dateTime(iso: string | null | undefined): string {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(undefined, {
    year: 'numeric',
    month: 'short',
    day: 'numeric',
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit',
  });
}

export function bytes(n: number | undefined | null): string {
  if (n === undefined || n === null) return '';
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function duration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  const m = Math.floor(s / 60);
  const hh = Math.floor(m / 60);
  const pad = (x: number) => String(x).padStart(2, '0');
  return hh > 0 ? `${hh}:${pad(m % 60)}:${pad(s % 60)}` : `${m}:${pad(s % 60)}`;
}

/** A status dot with an accessible label. */
export function dot(state: 'ok' | 'off' | 'warn', label: string): HTMLElement {
  return h('span', { class: `dot dot-${state}`, role: 'img', 'aria-label': label, title: label });
}

export function errorBox(message: string): HTMLElement {
  return h('div', { class: 'alert alert-error', role: 'alert' }, message);
}

export function shortId(id: string): string {
  return id.length > 8 ? id.slice(0, 8) : id;
}

/** How often the live pages reload what they show. */
export const REFRESH_MS = 5000;

/**
 * Calls `load` on `refresh()` and again `REFRESH_MS` after each call
 * settles; a new call aborts the one in flight (its `AbortError` is
 * dropped), other failures go to `onError`. `stop()` ends it.
 */
export function poll(
  load: (signal: AbortSignal) => Promise<void>,
  onError: (e: unknown) => void,
): { refresh: () => void; stop: () => void } {
  let ctl: AbortController | null = null;
  let timer: number | undefined;
  let stopped = false;
  const refresh = async (): Promise<void> => {
    if (stopped) return;
    ctl?.abort();
    ctl = new AbortController();
    try {
      await load(ctl.signal);
    } catch (e) {
      if ((e as Error).name === 'AbortError') return;
      onError(e);
    } finally {
      if (!stopped) {
        clearTimeout(timer);
        timer = window.setTimeout(refresh, REFRESH_MS);
      }
    }
  };
  return {
    refresh: () => void refresh(),
    stop: () => {
      stopped = true;
      clearTimeout(timer);
      ctl?.abort();
    },
  };
}

/** Newer/Older buttons under a paginated list; `show` sets them from a page. */
export function pager(move: (delta: -1 | 1) => void): {
  el: HTMLElement;
  show: (page: { next: string | null; previous: string | null }) => void;
} {
  const prev = h('button', { class: 'btn btn-ghost btn-sm', type: 'button' }, '← Newer');
  const next = h('button', { class: 'btn btn-ghost btn-sm', type: 'button' }, 'Older →');
  const el = h('div', { class: 'pager', hidden: true }, prev, next);
  prev.addEventListener('click', () => move(-1));
  next.addEventListener('click', () => move(1));
  return {
    el,
    show: (p) => {
      el.hidden = !p.next && !p.previous;
      prev.disabled = !p.previous;
      next.disabled = !p.next;
    },
  };
}
