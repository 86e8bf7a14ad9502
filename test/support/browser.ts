// Headless Chromium for the approval page's tests: Debian's chromium driven by playwright-core
// (no browser download), a fresh profile per launch, screenshots kept under test/output/
// (gitignored; CI keeps them as artefacts).

import type { Test } from 'tap';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { repoRoot } from './cli.js';

export const CHROMIUM = process.env.KEYTETHER_TEST_CHROMIUM ?? '/usr/bin/chromium';
export const SCREENSHOT_DIR = path.join(repoRoot, 'test', 'output', 'screenshots');

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

export async function launchChromium(t: Test): Promise<Browser> {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
  t.teardown(() => browser.close());
  return browser;
}

/** Saves a full-page screenshot as test/output/screenshots/NAME.png; returns the PNG. */
export async function screenshot(page: Page, name: string): Promise<Buffer> {
  await mkdir(SCREENSHOT_DIR, { recursive: true });
  return page.screenshot({ path: path.join(SCREENSHOT_DIR, `${name}.png`), fullPage: true });
}
