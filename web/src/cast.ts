// asciicast v2: a JSON header line, then one `[time, code, data]` per line.
// https://docs.asciinema.org/manual/asciicast/v2/

export interface CastHeader {
  version: number;
  width: number;
  height: number;
  timestamp?: number;
  idle_time_limit?: number;
  title?: string;
  [k: string]: unknown;
}

export interface CastEvent {
  /** Seconds from the start (after idle compression). */
  t: number;
  code: string;
  data: string;
}

export interface Cast {
  header: CastHeader;
  events: CastEvent[];
  duration: number;
  /** Lines that did not parse (a crash can cut the last one). */
  skipped: number;
}

/** Parses a cast; gaps longer than `idleLimit` seconds are shortened to it. */
export function parseCast(text: string, idleLimit?: number): Cast {
  const lines = text.split('\n');
  let i = 0;
  while (i < lines.length && lines[i].trim() === '') i++;
  if (i >= lines.length) throw new Error('the recording is empty');
  let header: CastHeader;
  try {
    header = JSON.parse(lines[i]);
  } catch {
    throw new Error('the recording has no asciicast header');
  }
  if (!header || typeof header !== 'object' || header.version !== 2) {
    throw new Error(`unsupported recording format (version ${String((header as CastHeader)?.version)})`);
  }
  const limit = idleLimit ?? (typeof header.idle_time_limit === 'number' ? header.idle_time_limit : undefined);
  const events: CastEvent[] = [];
  let skipped = 0;
  let lastRaw = 0;
  let t = 0;
  for (i++; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line) continue;
    let ev: unknown;
    try {
      ev = JSON.parse(line);
    } catch {
      skipped++;
      continue;
    }
    if (!Array.isArray(ev) || ev.length < 3 || typeof ev[0] !== 'number' || typeof ev[1] !== 'string' || typeof ev[2] !== 'string') {
      skipped++;
      continue;
    }
    const raw = Math.max(ev[0], lastRaw);
    let gap = raw - lastRaw;
    if (limit !== undefined && gap > limit) gap = limit;
    lastRaw = raw;
    t += gap;
    events.push({ t, code: ev[1], data: ev[2] });
  }
  return { header, events, duration: events.length ? events[events.length - 1].t : 0, skipped };
}

/** "COLSxROWS" of a resize event. */
export function parseSize(data: string): { cols: number; rows: number } | null {
  const m = /^(\d+)x(\d+)$/.exec(data.trim());
  if (!m) return null;
  const cols = Number(m[1]);
  const rows = Number(m[2]);
  return cols > 0 && rows > 0 && cols <= 1000 && rows <= 1000 ? { cols, rows } : null;
}
