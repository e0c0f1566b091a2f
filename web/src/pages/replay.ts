import { ApiError, getRecording, getSession, sessionServerName, sessionUser } from '../api';
import { parseCast, parseSize, type Cast } from '../cast';
import type { Page } from '../main';
import { bufferText, makeTerminal } from '../term';
import { dateTime, duration, h, shortId } from '../ui';

/** Idle gaps in the recording longer than this are shortened to it. */
const IDLE_LIMIT_S = 2;
/** Output written per step while seeking (keeps xterm's queue small). */
const SEEK_BATCH = 1 << 20;

export const replayPage: Page = (ctx) => {
  const id = ctx.params[0];
  ctx.title('Replay');
  const title = h('h1', { class: 'term-title' }, 'Recording');
  const sub = h('div', { class: 'muted small term-sub' }, `session ${shortId(id)}`);
  const status = h('div', { class: 'alert alert-error', role: 'alert', hidden: true });
  const playBtn = h('button', { class: 'btn btn-primary btn-sm play', type: 'button', id: 'replay-play', disabled: true, 'aria-label': 'Play' }, 'Play');
  const slider = h('input', { type: 'range', min: 0, max: 0, step: 0.01, value: 0, id: 'replay-seek', class: 'seek', 'aria-label': 'Position', disabled: true });
  const clock = h('span', { class: 'clock mono', id: 'replay-clock' }, '0:00 / 0:00');
  const speed = h(
    'select',
    { class: 'speed', 'aria-label': 'Speed', id: 'replay-speed' },
    ...[0.5, 1, 2, 4, 8].map((s) => h('option', { value: s, selected: s === 1 }, `${s}×`)),
  );
  const download = h('button', { class: 'btn btn-ghost btn-sm', type: 'button', disabled: true }, 'Download .cast');
  const screen = h('div', { class: 'replay-screen', id: 'replay' });
  const wrap = h('div', { class: 'replay-wrap' }, screen);
  ctx.main.append(
    h(
      'div',
      { class: 'term-head' },
      h('a', { class: 'back', href: '#/sessions', 'aria-label': 'Back to sessions' }, '←'),
      h('div', { class: 'term-heading' }, title, sub),
      h('div', { class: 'spacer' }),
      download,
    ),
    status,
    wrap,
    h('div', { class: 'player' }, playBtn, slider, clock, speed),
    h('p', { class: 'muted small player-note' }, `Idle pauses longer than ${IDLE_LIMIT_S} s are shortened.`),
  );

  const { term } = makeTerminal({ cursorBlink: false, disableStdin: true, scrollback: 2000 });
  term.open(screen);
  window.__alpacon = { term, client: null, text: () => bufferText(term) };

  /** Scales the font so the recording's whole screen fits the area. */
  const fitFont = (round = 0) => {
    const el = screen.querySelector<HTMLElement>('.xterm-screen');
    if (!el || disposed) return;
    const r = el.getBoundingClientRect();
    const availW = wrap.clientWidth - 16;
    const availH = wrap.clientHeight - 16;
    if (!r.width || !r.height || availW <= 0 || availH <= 0) return;
    const cur = term.options.fontSize ?? 14;
    const next = Math.max(7, Math.min(16, Math.floor(cur * Math.min(availW / r.width, availH / r.height))));
    if (next !== cur) {
      term.options.fontSize = next;
      if (round < 3) requestAnimationFrame(() => fitFont(round + 1));
    }
  };
  const onWinResize = () => fitFont();
  window.addEventListener('resize', onWinResize);

  let cast: Cast | null = null;
  let pos = 0; // next event to apply
  let time = 0; // seconds into the (compressed) recording
  let playing = false;
  let raf = 0;
  let lastFrame = 0;
  let seekGen = 0;
  let seeking = false;
  let disposed = false;

  const baseSize = () => ({
    cols: Math.min(500, Math.max(2, cast?.header.width || 80)),
    rows: Math.min(300, Math.max(2, cast?.header.height || 24)),
  });
  const showClock = () => {
    clock.textContent = `${duration(time * 1000)} / ${duration((cast?.duration ?? 0) * 1000)}`;
    if (!seeking) slider.value = String(time);
  };
  const setPlaying = (p: boolean) => {
    playing = p;
    playBtn.textContent = p ? 'Pause' : 'Play';
    playBtn.setAttribute('aria-label', p ? 'Pause' : 'Play');
    cancelAnimationFrame(raf);
    if (p) {
      lastFrame = performance.now();
      raf = requestAnimationFrame(tick);
    }
  };

  /** Applies events up to `until` (seconds); output is written in batches. */
  const applyUntil = async (until: number, gen: number): Promise<void> => {
    if (!cast) return;
    let buf = '';
    const flush = (after?: () => void) =>
      new Promise<void>((resolve) => {
        const data = buf;
        buf = '';
        term.write(data, () => {
          after?.();
          resolve();
        });
      });
    while (pos < cast.events.length && cast.events[pos].t <= until) {
      const ev = cast.events[pos++];
      if (ev.code === 'o') {
        buf += ev.data;
        if (buf.length >= SEEK_BATCH) {
          await flush();
          if (gen !== seekGen || disposed) return;
        }
      } else if (ev.code === 'r') {
        const size = parseSize(ev.data);
        // The resize happens between the output before and after it.
        if (size)
          void flush(() => {
            term.resize(size.cols, size.rows);
            requestAnimationFrame(() => fitFont());
          });
      }
    }
    if (buf) await flush();
  };

  const tick = (now: number) => {
    if (!playing || !cast) return;
    const speedV = Number(speed.value) || 1;
    time = Math.min(cast.duration, time + ((now - lastFrame) / 1000) * speedV);
    lastFrame = now;
    void applyUntil(time, seekGen);
    showClock();
    if (time >= cast.duration) {
      setPlaying(false);
      return;
    }
    raf = requestAnimationFrame(tick);
  };

  const seek = async (target: number) => {
    if (!cast) return;
    const gen = ++seekGen;
    const wasPlaying = playing;
    if (wasPlaying) setPlaying(false);
    time = Math.max(0, Math.min(cast.duration, target));
    if (time < (pos > 0 ? cast.events[pos - 1].t : 0) || pos === 0) {
      term.reset();
      const s = baseSize();
      term.resize(s.cols, s.rows);
      requestAnimationFrame(() => fitFont());
      pos = 0;
    }
    showClock();
    await applyUntil(time, gen);
    if (gen === seekGen && wasPlaying && !disposed) setPlaying(true);
  };

  playBtn.addEventListener('click', () => {
    if (!cast) return;
    if (playing) setPlaying(false);
    else if (time >= cast.duration) void seek(0).then(() => setPlaying(true));
    else setPlaying(true);
  });
  slider.addEventListener('input', () => {
    seeking = true;
    void seek(Number(slider.value)).finally(() => {
      seeking = false;
    });
  });
  const onKey = (e: KeyboardEvent) => {
    if (e.key === ' ' && e.target === document.body) {
      e.preventDefault();
      playBtn.click();
    }
  };
  document.addEventListener('keydown', onKey);

  const ctl = new AbortController();
  let castText = '';
  download.addEventListener('click', () => {
    const url = URL.createObjectURL(new Blob([castText], { type: 'application/x-asciicast' }));
    const a = h('a', { href: url, download: `session-${id}.cast` });
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  });

  getSession(id, ctl.signal)
    .then((s) => {
      const name = sessionServerName(s);
      if (name) {
        title.textContent = `${name} — recording`;
        ctx.title(`${name} recording`);
      }
      const u = sessionUser(s);
      sub.textContent = `session ${shortId(id)}${u ? ` · ${u}` : ''}${s.created_at ? ` · ${dateTime(s.created_at)}` : ''}`;
    })
    .catch(() => {});
  getRecording(id, ctl.signal)
    .then(async (text) => {
      if (disposed) return;
      castText = text;
      cast = parseCast(text, IDLE_LIMIT_S);
      download.disabled = false;
      slider.max = String(cast.duration);
      slider.disabled = false;
      playBtn.disabled = cast.events.length === 0;
      const s = baseSize();
      term.resize(s.cols, s.rows);
      requestAnimationFrame(() => fitFont());
      showClock();
      if (cast.events.length === 0) {
        status.className = 'alert alert-info';
        status.textContent = 'The recording has no events yet.';
        status.hidden = false;
      } else {
        setPlaying(true);
      }
    })
    .catch((e) => {
      if ((e as Error).name === 'AbortError') return;
      status.textContent = e instanceof ApiError ? e.message : `Cannot read the recording: ${(e as Error).message ?? e}`;
      status.hidden = false;
    });

  return () => {
    disposed = true;
    seekGen++;
    ctl.abort();
    cancelAnimationFrame(raf);
    document.removeEventListener('keydown', onKey);
    window.removeEventListener('resize', onWinResize);
    term.dispose();
    delete window.__alpacon;
  };
};
