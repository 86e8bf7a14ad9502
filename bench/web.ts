// The approval page's weight and first render (issue #15): every byte the page loads, and the
// time from navigation start to first contentful paint in headless Chromium (Debian's chromium
// through playwright-core), median over BENCH_WEB_LOADS loads (default 15), each a fresh context
// with a fresh one-time link. The anchor, measured in the same run and browser, is a one-line
// HTML page from a bare fastify on loopback: the floor of "a page from a local server", so
// "× anchor" is what the page's own files, modules, session and event stream add.
// Targets: weight ≤ 200 KiB, first render ≤ 300 ms.

import Fastify from 'fastify';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { chromium, type Browser } from 'playwright-core';
import { ApprovalBroker } from '../workstation/approvals/broker.js';
import { startWebServer } from '../workstation/web/server.js';
import { envNumber, median } from './support/settings.js';

const CHROMIUM = process.env.KEYTETHER_BENCH_CHROMIUM ?? '/usr/bin/chromium';
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// Evaluated in the page: FCP and the bytes of every response (document and resources).
const MEASURE = `new Promise((resolve) => {
  const done = () => {
    const fcp = performance.getEntriesByName('first-contentful-paint')[0];
    if (!fcp) return false;
    const nav = performance.getEntriesByType('navigation')[0];
    const bytes = [nav, ...performance.getEntriesByType('resource')]
      .reduce((n, e) => n + (e.encodedBodySize || 0), 0);
    resolve({ fcp: fcp.startTime, bytes });
    return true;
  };
  if (!done()) new PerformanceObserver(() => done()).observe({ type: 'paint', buffered: true });
})`;

async function load(
  browser: Browser,
  url: string,
  ready: string,
): Promise<{ fcp: number; bytes: number }> {
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    await page.goto(url);
    await page.waitForSelector(ready);
    return (await page.evaluate(MEASURE)) as { fcp: number; bytes: number };
  } finally {
    await context.close();
  }
}

export async function run(): Promise<void> {
  const loads = envNumber('BENCH_WEB_LOADS', 15, 1);
  const home = await mkdtemp(path.join(tmpdir(), 'kt-bench-web-'));
  const anchor = Fastify({ logger: false });
  anchor.get('/', async (_req, reply) =>
    reply
      .type('text/html; charset=utf-8')
      .send('<!doctype html><title>anchor</title><p>anchor</p>'),
  );
  await anchor.listen({ host: '127.0.0.1', port: 0 });
  const anchorUrl = `http://127.0.0.1:${(anchor.server.address() as AddressInfo).port}/`;
  const broker = new ApprovalBroker({
    pinentry: {
      getPassphrase: () => Promise.reject(new Error('not used')),
      confirm: () => Promise.reject(new Error('not used')),
    },
  });
  const web = await startWebServer({ broker, home, host: '127.0.0.1', port: 0, notify: false });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
  try {
    // Warm both: the first launch of a browser process pays for things neither page does.
    await load(browser, anchorUrl, 'p');
    await load(browser, web.freshUrl(), 'body[data-state=live]');
    const a: number[] = [];
    const p: number[] = [];
    let pageBytes = 0;
    let anchorBytes = 0;
    for (let i = 0; i < loads; i++) {
      const x = await load(browser, anchorUrl, 'p');
      a.push(x.fcp);
      anchorBytes = x.bytes;
      const y = await load(browser, web.freshUrl(), 'body[data-state=live]');
      p.push(y.fcp);
      pageBytes = y.bytes;
    }
    const ma = median(a);
    const mp = median(p);
    process.stdout.write(
      `anchor (one-line page, bare fastify): ${anchorBytes} bytes, first contentful paint ${ma.toFixed(1)} ms (median of ${loads})\n`,
    );
    process.stdout.write(
      `approval page: ${pageBytes} bytes (${(pageBytes / 1024).toFixed(1)} KiB, target ≤ 200 KiB), ` +
        `first contentful paint ${mp.toFixed(1)} ms (target ≤ 300 ms) = ${(mp / ma).toFixed(2)} × anchor\n`,
    );
  } finally {
    await browser.close();
    await web.close();
    await anchor.close();
    await rm(home, { recursive: true, force: true });
  }
}
