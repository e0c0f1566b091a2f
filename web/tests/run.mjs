#!/usr/bin/env node
// Browser end-to-end test of the web console, in real headless Chromium
// (Debian's /usr/bin/chromium, driven by playwright-core; nothing downloads a
// browser). Run it against a running gateway with a connected agent:
//
//   ALPACON_URL=https://localhost:8443 ALPACON_PASSWORD=... ALPACON_SERVER=vm \
//   ALPACON_CA=alpacon-data/tls/ca.crt node web/tests/run.mjs
//
// Environment:
//   ALPACON_URL        gateway URL (required)
//   ALPACON_PASSWORD   password of ALPACON_USER (required)
//   ALPACON_SERVER     name of a connected server to open a terminal on (required)
//   ALPACON_USER       default: admin
//   ALPACON_RUN_AS     account to open the terminal as ("Run as"; default: your own)
//   ALPACON_CA         CA certificate: the gateway's TLS is verified against it
//                      first (Chromium itself then ignores certificate errors)
//   ALPACON_CHROMIUM   default: /usr/bin/chromium
//   ALPACON_ARTIFACTS  directory for screenshots (default: a new temp dir)
//   ALPACON_SKIP_REPLAY=1  skip the recording replay step
//   ALPACON_WORK_SESSIONS=1  also test the work-session workflow. It CHANGES the
//                      gateway: sets the work-session policy to "members"
//                      (restored at the end), creates a member user, a group
//                      holding ALPACON_SERVER, and a work session. Use it
//                      against a throw-away gateway (crates/e2e/tests/console.rs).
//   ALPACON_MEMBER     the member's username there (default: wsm<random>)
//   ALPACON_TIMEOUT_MS per-step timeout (default 30000)
//
// Exits 0 when every step passed; otherwise 1, with the step, the error,
// what the page and the terminal showed, and screenshots.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, readFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const env = process.env;
const need = (k) => {
  const v = env[k];
  if (!v) fatal(`${k} is not set (see the header of web/tests/run.mjs)`);
  return v;
};
function fatal(msg) {
  console.error(`console e2e: ${msg}`);
  process.exit(2);
}

const BASE = need('ALPACON_URL').replace(/\/+$/, '');
const PASSWORD = need('ALPACON_PASSWORD');
const SERVER = need('ALPACON_SERVER');
const USER = env.ALPACON_USER || 'admin';
const RUN_AS = env.ALPACON_RUN_AS || '';
const CA = env.ALPACON_CA || '';
const CHROMIUM = env.ALPACON_CHROMIUM || '/usr/bin/chromium';
const TIMEOUT = Number(env.ALPACON_TIMEOUT_MS || 30000);
const ARTIFACTS = env.ALPACON_ARTIFACTS || mkdtempSync(join(tmpdir(), 'alpacon-console-e2e-'));
mkdirSync(ARTIFACTS, { recursive: true });

if (!existsSync(CHROMIUM)) {
  fatal(`${CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium) or set ALPACON_CHROMIUM`);
}

const started = Date.now();
const log = (msg) => console.log(`[console e2e +${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);

let step = 'start';
let page = null;
const pageErrors = [];
const consoleErrors = [];

/** GET over Node's TLS with the CA: the gateway's certificate must verify. */
function getWithCa(path) {
  return new Promise((resolve, reject) => {
    const req = https.get(BASE + path, { ca: readFileSync(CA), timeout: 10000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timed out')));
  });
}

async function termText(p = page) {
  return p.evaluate(() => (window.__alpacon ? window.__alpacon.text() : null)).catch(() => null);
}

/** Waits until the terminal's text satisfies `pred`; returns the text. */
async function waitForTerm(what, pred, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  let text = '';
  while (Date.now() < deadline) {
    text = (await termText()) ?? '';
    if (pred(text)) return text;
    await page.waitForTimeout(100);
  }
  throw new Error(`timed out after ${timeout} ms waiting for ${what}; the terminal shows:\n${indent(text)}`);
}

const indent = (s, max = 60) => {
  const lines = String(s).split('\n');
  const shown = lines.length > max ? [`(last ${max} of ${lines.length} lines)`, ...lines.slice(-max)] : lines;
  return shown.map((l) => '    | ' + l).join('\n');
};
const linesOf = (text) => text.split('\n').map((l) => l.trimEnd());
const countLine = (text, line) => linesOf(text).filter((l) => l === line).length;

async function noHorizontalOverflow(p, where) {
  const m = await p.evaluate(() => ({
    inner: window.innerWidth,
    doc: document.documentElement.scrollWidth,
    body: document.body.scrollWidth,
  }));
  if (m.doc > m.inner || m.body > m.inner) {
    throw new Error(`${where}: the page scrolls horizontally at ${m.inner}px (document ${m.doc}px, body ${m.body}px)`);
  }
  log(`${where}: no horizontal overflow at ${m.inner}px`);
}

async function shot(p, name) {
  const file = join(ARTIFACTS, name);
  await p.screenshot({ path: file });
  log(`screenshot ${file}`);
}

async function login(p, password, user = USER) {
  await p.fill('#username', user);
  await p.fill('#password', password);
  await p.click('#login-submit');
}

function watch(p) {
  p.on('pageerror', (e) => pageErrors.push(String(e && e.stack ? e.stack : e)));
  p.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(m.text());
  });
}

async function diagnose() {
  if (!page || page.isClosed()) return;
  try {
    console.error(`page URL: ${page.url()}`);
    const banner = await page.evaluate(() => {
      const b = document.querySelector('#term-banner');
      return b && !b.hidden ? b.textContent : null;
    });
    if (banner) console.error(`banner: ${banner}`);
    const alerts = await page.$$eval('.alert:not([hidden])', (els) => els.map((e) => e.textContent));
    if (alerts.length) console.error(`alerts: ${alerts.join(' | ')}`);
    const t = await termText();
    if (t !== null) console.error(`terminal:\n${indent(t)}`);
    else console.error(`page text:\n${indent((await page.innerText('body')).slice(0, 2000))}`);
    await shot(page, 'failure.png');
  } catch (e2) {
    console.error(`(could not read the page: ${e2})`);
  }
}

async function main() {
  step = 'preflight';
  if (CA) {
    const r = await getWithCa('/api/status/');
    if (r.status !== 200) throw new Error(`GET /api/status/ answered ${r.status}: ${r.body}`);
    const index = await getWithCa('/');
    if (index.status !== 200 || !/<script[^>]+src="\/assets\//.test(index.body)) {
      throw new Error(`GET / does not serve the built console (status ${index.status}); run npm ci && npm run build in web/ and rebuild the gateway. It served:\n${indent(index.body.slice(0, 600))}`);
    }
    log(`gateway TLS verified against ${CA}; the console is served`);
  }

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--ignore-certificate-errors',
    ],
  });
  try {
    // 1. A phone: the login page and the server list fit 390 px.
    step = 'phone: login page';
    const phone = await browser.newContext({
      viewport: { width: 390, height: 844 },
      isMobile: true,
      hasTouch: true,
      ignoreHTTPSErrors: true,
    });
    page = await phone.newPage();
    watch(page);
    page.setDefaultTimeout(TIMEOUT);
    await page.goto(BASE + '/');
    await page.waitForSelector('#username');
    await noHorizontalOverflow(page, 'login page (phone)');
    await shot(page, 'phone-login.png');

    step = 'phone: wrong password shows the API detail';
    await login(page, PASSWORD + '-wrong');
    await page.waitForSelector('#login-error:not([hidden])');
    const detail = (await page.textContent('#login-error')).trim();
    if (!detail) throw new Error('the login error is empty');
    log(`wrong password: "${detail}"`);

    step = 'phone: server list';
    await login(page, PASSWORD);
    await page.waitForSelector(`#servers tr[data-name="${SERVER}"]`);
    await noHorizontalOverflow(page, 'server list (phone)');
    await shot(page, 'phone-servers.png');
    await phone.close();

    // 2. A desktop browser: a terminal.
    step = 'desktop: log in';
    const desk = await browser.newContext({ viewport: { width: 1280, height: 800 }, ignoreHTTPSErrors: true });
    page = await desk.newPage();
    watch(page);
    page.setDefaultTimeout(TIMEOUT);
    await page.goto(BASE + '/#/servers');
    await page.waitForSelector('#username');
    await login(page, PASSWORD);

    step = `desktop: "Open terminal" on ${SERVER}`;
    const btn = `#servers tr[data-name="${SERVER}"][data-connected="true"] button.open-terminal`;
    await page.waitForSelector(btn);
    await page.fill('#run-as', RUN_AS);
    await shot(page, 'desktop-servers.png');
    await page.click(btn);

    step = 'desktop: terminal attaches';
    await page.waitForFunction(() => document.querySelector('#conn-state')?.textContent === 'Connected');
    await page.waitForFunction(() => /^#\/sessions\/[^/]+$/.test(location.hash));
    const sessionId = decodeURIComponent((await page.evaluate(() => location.hash)).split('/')[2]);
    log(`session ${sessionId} attached`);
    // Something (the prompt) arrives before we type.
    await waitForTerm('the shell prompt', (t) => t.trim().length > 0);

    step = 'desktop: type a command and see its output';
    await page.click('#terminal');
    await page.keyboard.type('echo hello-$((6*7))');
    await page.keyboard.press('Enter');
    await waitForTerm('a line "hello-42"', (t) => countLine(t, 'hello-42') >= 1);
    log('the terminal shows hello-42');
    await shot(page, 'desktop-terminal.png');

    step = 'desktop: resizing the window resizes the terminal';
    await page.setViewportSize({ width: 1000, height: 640 });
    await page.waitForTimeout(300);
    const size = await page.evaluate(() => [window.__alpacon.term.rows, window.__alpacon.term.cols]);
    await page.keyboard.type('stty size');
    await page.keyboard.press('Enter');
    await waitForTerm(`"stty size" to print "${size[0]} ${size[1]}"`, (t) => countLine(t, `${size[0]} ${size[1]}`) >= 1);
    log(`the shell sees the resized terminal: ${size[0]} rows, ${size[1]} columns`);

    step = 'desktop: reconnect resumes output exactly once';
    await page.keyboard.type('for i in 1 2 3 4 5 6; do echo tick-$i; sleep 0.3; done');
    await page.keyboard.press('Enter');
    await waitForTerm('tick-2', (t) => countLine(t, 'tick-2') >= 1);
    const before = await page.evaluate(() => window.__alpacon.client.connections);
    await page.evaluate(() => window.__alpacon.client.drop());
    await waitForTerm('tick-6', (t) => countLine(t, 'tick-6') >= 1);
    const after = await page.evaluate(() => window.__alpacon.client.connections);
    if (after <= before) throw new Error(`the page did not reconnect (connections ${before} → ${after})`);
    let text = await termText();
    for (let i = 1; i <= 6; i++) {
      const n = countLine(text, `tick-${i}`);
      if (n !== 1) throw new Error(`"tick-${i}" appears ${n} times after a reconnection; the terminal shows:\n${indent(text)}`);
    }
    log(`output resumed exactly once across a dropped connection (${after} connections)`);

    step = 'desktop: input typed while disconnected is delivered once';
    await page.evaluate(() => window.__alpacon.client.drop());
    await page.keyboard.type('echo typed-$((1+1))-away');
    await page.keyboard.press('Enter');
    text = await waitForTerm('a line "typed-2-away"', (t) => countLine(t, 'typed-2-away') >= 1);
    await page.waitForTimeout(500);
    text = await termText();
    if (countLine(text, 'typed-2-away') !== 1) throw new Error(`"typed-2-away" appears ${countLine(text, 'typed-2-away')} times:\n${indent(text)}`);
    log('input typed while disconnected arrived once');

    step = 'desktop: a 200 kB paste arrives whole';
    await page.keyboard.type('wc -c');
    await page.keyboard.press('Enter');
    await page.waitForTimeout(300);
    await page.evaluate(() => {
      const line = 'x'.repeat(99) + '\n';
      window.__alpacon.term.paste(line.repeat(2000));
    });
    await page.keyboard.press('Control+D');
    await waitForTerm('wc to count 200000 bytes', (t) => countLine(t, '200000') === 1);
    log('a 200 kB paste arrived whole');

    step = 'desktop: flow control: 2 MB of output arrive in full';
    await page.keyboard.type('seq 1 300000');
    await page.keyboard.press('Enter');
    await waitForTerm('the line "300000"', (t) => countLine(t, '300000') === 1, Math.max(TIMEOUT, 60000));
    log('seq 1 300000 arrived to its last line (the page acks what it consumed)');

    step = 'desktop: Ctrl-C stops a flood promptly';
    await page.keyboard.type('yes alpacon-flood');
    await page.keyboard.press('Enter');
    await waitForTerm('the flood', (t) => countLine(t, 'alpacon-flood') > 10);
    await page.waitForTimeout(1000);
    const ctrlC = Date.now();
    await page.keyboard.press('Control+C');
    await page.keyboard.type('echo after-$((2+3))');
    await page.keyboard.press('Enter');
    await waitForTerm('a line "after-5" after Ctrl-C', (t) => countLine(t, 'after-5') === 1);
    log(`Ctrl-C stopped the flood; the shell answered ${Date.now() - ctrlC} ms later`);

    step = 'desktop: exit ends the session';
    await page.keyboard.type('exit 3');
    await page.keyboard.press('Enter');
    await waitForTerm('"[session ended: code 3]"', (t) => t.includes('[session ended: code 3]'));
    await page.waitForFunction(() => document.querySelector('#conn-state')?.textContent === 'Ended');
    log('the session ended with code 3');
    await shot(page, 'desktop-ended.png');

    if (!env.ALPACON_SKIP_REPLAY) {
      step = 'desktop: the sessions list links the recording';
      await page.goto(BASE + '/#/sessions');
      const replayLink = `#sessions tr[data-id="${sessionId}"] a.replay`;
      await page.waitForSelector(replayLink);
      await shot(page, 'desktop-sessions.png');
      await page.click(replayLink);

      step = 'desktop: the replay shows the session';
      await page.waitForSelector('#replay-seek:not([disabled])');
      await page.$eval('#replay-seek', (el) => {
        el.value = el.max;
        el.dispatchEvent(new Event('input', { bubbles: true }));
      });
      text = await waitForTerm('the replay to end with "after-5" and "logout"', (t) => countLine(t, 'after-5') === 1 && countLine(t, 'logout') === 1);
      log('seeking to the end shows the end of the session');
      await page.$eval('#replay-seek', (el) => {
        el.value = '0.5';
        el.dispatchEvent(new Event('input', { bubbles: true }));
      });
      await page.click('#replay-play');
      text = await waitForTerm('the replay from the start to show hello-42', (t) => countLine(t, 'hello-42') === 1 && countLine(t, 'after-5') === 0);
      log('the replay shows the session output');
      await shot(page, 'desktop-replay.png');
    }

    if (env.ALPACON_WORK_SESSIONS) await workSessions(browser, page);

    step = 'no uncaught errors in the page';
    if (pageErrors.length) throw new Error(`uncaught errors in the page:\n${indent(pageErrors.join('\n'))}`);
    await desk.close();
  } catch (e) {
    console.error(`\nconsole e2e FAILED at step: ${step}\n${e && e.stack ? e.stack : e}`);
    await diagnose();
    e.reported = true;
    throw e;
  } finally {
    await browser.close().catch(() => {});
  }
}

/**
 * The work-session workflow: the admin (`admin`, a signed-in page) sets the
 * policy to "members" in the console and gives a new member the server
 * through a group (API); the member's terminal is refused with the way to
 * request a session; the member requests one in the form; the admin
 * approves it in the console; the member uses it and the terminal works;
 * the timeline shows the request, the approval and the terminal.
 */
async function workSessions(browser, admin) {
  step = 'work sessions: set-up through the API';
  const adminKey = await admin.evaluate(() => sessionStorage.getItem('alpacon.key'));
  if (!adminKey) throw new Error('the admin page holds no session key');
  const call = async (method, path, body) => {
    const r = await admin.request.fetch(BASE + path, {
      method,
      headers: { Authorization: `Token ${adminKey}`, Accept: 'application/json' },
      data: body,
    });
    const text = await r.text();
    let json = text;
    try {
      json = JSON.parse(text);
    } catch {
      /* keep the text */
    }
    if (r.status() >= 300) throw new Error(`${method} ${path} answered ${r.status()}: ${text}`);
    return json;
  };
  const member = env.ALPACON_MEMBER || 'wsm' + Date.now().toString(36);
  const memberPassword = `${member}'s console password ${Math.random().toString(36).slice(2)}`;
  const group = `${member}-ops`;
  const policyBefore = await call('GET', '/api/work-sessions/policy/');
  let memberCtx = null;
  try {
    step = 'work sessions: the admin sets the policy to "members" in the console';
    await admin.goto(BASE + '/#/work-sessions/policy');
    await admin.waitForSelector('#ws-policy:not([hidden])');
    await admin.selectOption('#policy-required-for', 'members');
    await admin.click('#policy-save');
    await admin.waitForSelector('#policy-saved:not([hidden])');
    const pol = await call('GET', '/api/work-sessions/policy/');
    if (pol.required_for !== 'members') throw new Error(`the policy reads ${JSON.stringify(pol)} after saving`);
    log(`policy: ${(await admin.textContent('#policy-summary')).trim()}`);
    await shot(admin, 'ws-policy.png');

    step = 'work sessions: a member reaches the server through a group (API)';
    await call('POST', '/api/iam/users/', { username: member, password: memberPassword });
    await call('POST', '/api/iam/groups/', { name: group });
    await call('POST', `/api/iam/groups/${encodeURIComponent(group)}/servers/`, { server: SERVER });
    await call('POST', '/api/iam/memberships/', { group, user: member });
    log(`member ${member} in group ${group}, which holds ${SERVER}`);

    step = 'work sessions: the member signs in';
    memberCtx = await browser.newContext({ viewport: { width: 1280, height: 800 }, ignoreHTTPSErrors: true });
    const mp = await memberCtx.newPage();
    page = mp;
    watch(mp);
    mp.setDefaultTimeout(TIMEOUT);
    await mp.goto(BASE + '/#/servers');
    await mp.waitForSelector('#username');
    await login(mp, memberPassword, member);
    const openBtn = `#servers tr[data-name="${SERVER}"][data-connected="true"] button.open-terminal`;
    await mp.waitForSelector(openBtn);

    step = 'work sessions: without a session the terminal is refused with the way to request one';
    await mp.click(openBtn);
    await mp.waitForSelector('#work-session-refusal');
    const code = await mp.getAttribute('#work-session-refusal', 'data-code');
    const refusal = (await mp.innerText('#work-session-refusal')).replace(/\s+/g, ' ').trim();
    if (code !== 'work_session_required') throw new Error(`refused with ${code}: ${refusal}`);
    if (!refusal.includes('needs an active work session')) throw new Error(`the refusal does not say why: ${refusal}`);
    if (await mp.isVisible('#terminal')) throw new Error('a terminal is shown beside the refusal');
    log(`refused: "${refusal.slice(0, 160)}"`);
    await shot(mp, 'ws-refused.png');

    step = 'work sessions: the member requests a session in the form';
    await mp.click('#request-work-session');
    await mp.waitForSelector('#ws-request:not([hidden])');
    await mp.waitForSelector(`#ws-servers input[name="ws-server"][value="${SERVER}"]:checked`);
    if (!(await mp.isChecked('#ws-scopes input[value="websh"]'))) throw new Error('the websh scope is not preselected');
    await mp.fill('#ws-purpose', 'console e2e: look at the box');
    await mp.selectOption('#ws-duration', '1h');
    await shot(mp, 'ws-request.png');
    await mp.click('#ws-submit');
    const pendingRow = `#work-sessions tr[data-status="pending"][data-requester="${member}"]`;
    await mp.waitForSelector(pendingRow);
    const wsId = await mp.getAttribute(pendingRow, 'data-id');
    if (await mp.$(`#work-sessions tr[data-id="${wsId}"] button.ws-approve`)) throw new Error('the requester is offered "Approve"');
    log(`requested work session ${wsId}`);

    step = 'work sessions: the admin approves it in the console';
    await admin.goto(BASE + '/#/work-sessions');
    await admin.click(`#work-sessions tr[data-id="${wsId}"] button.ws-approve`);
    await admin.waitForSelector(`#work-sessions tr[data-id="${wsId}"][data-status="active"]`);
    log('approved; the session is active');
    await shot(admin, 'ws-approved.png');

    step = 'work sessions: the member uses it (shown in the header bar)';
    await mp.click(`#work-sessions tr[data-id="${wsId}"][data-status="active"] button.ws-use`);
    await mp.waitForSelector(`#ws-in-use[data-id="${wsId}"]`);
    if (!(await mp.isVisible('#ws-stop'))) throw new Error('no way to stop using the session');

    step = 'work sessions: the terminal opens inside the session';
    await mp.click('a[data-nav="servers"]');
    await mp.click(openBtn);
    await mp.waitForFunction(() => document.querySelector('#conn-state')?.textContent === 'Connected');
    await mp.waitForFunction(() => /^#\/sessions\/[^/]+$/.test(location.hash));
    const termId = decodeURIComponent((await mp.evaluate(() => location.hash)).split('/')[2]);
    await waitForTerm('the shell prompt', (t) => t.trim().length > 0);
    await mp.click('#terminal');
    await mp.keyboard.type('id -un');
    await mp.keyboard.press('Enter');
    await waitForTerm(`a line "${member}"`, (t) => countLine(t, member) >= 1);
    log(`the terminal runs as ${member} (terminal ${termId})`);
    await shot(mp, 'ws-terminal.png');
    await mp.keyboard.type('exit');
    await mp.keyboard.press('Enter');
    await mp.waitForFunction(() => document.querySelector('#conn-state')?.textContent === 'Ended');

    step = 'work sessions: the timeline shows the request, the approval and the terminal';
    await mp.click('#ws-in-use a');
    await mp.waitForSelector(`#ws-timeline li[data-kind="terminal"][data-id="${termId}"]`);
    const kinds = await mp.$$eval('#ws-timeline li.tl', (els) => els.map((e) => e.dataset.action || e.dataset.kind));
    const at = (k) => kinds.indexOf(k);
    if (!(at('work_session.request') >= 0 && at('work_session.request') < at('work_session.approve') && at('work_session.approve') < at('terminal'))) {
      throw new Error(`the timeline reads ${JSON.stringify(kinds)}`);
    }
    const approval = (await mp.textContent('#ws-timeline li[data-action="work_session.approve"]')).replace(/\s+/g, ' ');
    if (!approval.includes(USER)) throw new Error(`the approval does not name ${USER}: ${approval}`);
    log(`timeline: ${kinds.join(' → ')}`);
    await shot(mp, 'ws-timeline.png');

    step = 'work sessions: the member asks for more time; the admin grants it';
    mp.once('dialog', (d) => d.accept('30m'));
    await mp.click('#ws-detail-actions button.ws-extend');
    await mp.waitForSelector('#ws-timeline li[data-action="work_session.extend_request"]');
    await admin.goto(BASE + `/#/work-sessions/${encodeURIComponent(wsId)}`);
    await admin.click('#ws-detail-actions button.ws-approve-extension');
    await admin.waitForSelector('#ws-timeline li[data-action="work_session.extend"]');
    await mp.waitForSelector('#ws-timeline li[data-action="work_session.extend"]');
    const extended = await call('GET', `/api/work-sessions/sessions/${wsId}/`);
    if (extended.duration_seconds !== 5400) throw new Error(`after the extension: ${JSON.stringify(extended)}`);
    log('extended by 30 min (asked in the console, approved in the console)');

    step = 'work sessions: the list and the header fit a phone';
    await mp.setViewportSize({ width: 390, height: 844 });
    await mp.click('a[data-nav="work"]');
    await mp.waitForSelector(`#work-sessions tr[data-id="${wsId}"].in-use`);
    await noHorizontalOverflow(mp, 'work sessions with one in use (phone)');
    await shot(mp, 'ws-phone.png');
    await mp.setViewportSize({ width: 1280, height: 800 });
    await mp.click(`#work-sessions tr[data-id="${wsId}"] a.ws-timeline`);
    await mp.waitForSelector('#ws-detail-actions button.ws-complete');

    step = 'work sessions: the member completes it';
    mp.once('dialog', (d) => d.accept());
    await mp.click('#ws-detail-actions button.ws-complete');
    await mp.waitForSelector('#ws-timeline li[data-action="work_session.completed"]');
    await mp.waitForSelector('#ws-in-use', { state: 'detached' });
    log('completed; the header no longer shows a session in use');

    step = 'work sessions: after it, the terminal is refused again';
    await mp.click('a[data-nav="servers"]');
    await mp.click(openBtn);
    await mp.waitForSelector('#work-session-refusal[data-code="work_session_required"]');
    log('refused again once the session is over');
    page = admin;
    await memberCtx.close();
  } finally {
    // (On failure the member's page stays open for the diagnosis.) Put the policy back (a failure here must not hide the first one).
    await call('PUT', '/api/work-sessions/policy/', policyBefore).catch((e) => log(`could not restore the policy: ${e}`));
  }
}

try {
  await main();
  log(`PASS (screenshots in ${ARTIFACTS})`);
  process.exit(0);
} catch (e) {
  if (!e || !e.reported) console.error(`\nconsole e2e FAILED at step: ${step}\n${e && e.stack ? e.stack : e}`);
  if (consoleErrors.length) console.error(`browser console errors:\n${indent(consoleErrors.join('\n'))}`);
  if (pageErrors.length) console.error(`uncaught page errors:\n${indent(pageErrors.join('\n'))}`);
  console.error(`screenshots: ${ARTIFACTS}`);
  process.exit(1);
}
