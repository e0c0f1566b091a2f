// xterm.js set-up shared by the live terminal and the replay.
import { FitAddon } from '@xterm/addon-fit';
import { WebLinksAddon } from '@xterm/addon-web-links';
import { Terminal, type ITerminalOptions } from '@xterm/xterm';

export const theme = {
  background: '#0b0f14',
  foreground: '#d6dde6',
  cursor: '#58a6ff',
  cursorAccent: '#0b0f14',
  selectionBackground: '#264f78',
  black: '#1b2129',
  red: '#ff7b72',
  green: '#3fb950',
  yellow: '#d29922',
  blue: '#58a6ff',
  magenta: '#bc8cff',
  cyan: '#39c5cf',
  white: '#c9d1d9',
  brightBlack: '#6e7681',
  brightRed: '#ffa198',
  brightGreen: '#56d364',
  brightYellow: '#e3b341',
  brightBlue: '#79c0ff',
  brightMagenta: '#d2a8ff',
  brightCyan: '#56d4dd',
  brightWhite: '#f0f6fc',
};

export function narrowScreen(): boolean {
  return window.matchMedia('(max-width: 640px)').matches;
}

export function makeTerminal(opts: ITerminalOptions = {}): { term: Terminal; fit: FitAddon } {
  const term = new Terminal({
    fontFamily: 'ui-monospace, "SFMono-Regular", "JetBrains Mono", Menlo, Consolas, "DejaVu Sans Mono", "Liberation Mono", monospace',
    fontSize: narrowScreen() ? 12 : 14,
    lineHeight: 1.1,
    cursorBlink: true,
    scrollback: 5000,
    theme,
    allowProposedApi: false,
    ...opts,
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.loadAddon(
    new WebLinksAddon((ev, uri) => {
      ev.preventDefault();
      const w = window.open(uri, '_blank', 'noopener,noreferrer');
      if (w) w.opener = null;
    }),
  );
  return { term, fit };
}

/** The text of the terminal's buffer (tests and debugging). */
export function bufferText(term: Terminal): string {
  const b = term.buffer.active;
  const lines: string[] = [];
  for (let i = 0; i < b.length; i++) lines.push(b.getLine(i)?.translateToString(true) ?? '');
  return lines.join('\n').replace(/\n+$/, '');
}
