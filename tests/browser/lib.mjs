// What the browser tests share: Chromium (Debian's /usr/bin/chromium
// through playwright-core, which never downloads a browser) with a fresh
// profile, a watch on page errors, and one way to fail a step — with a
// message naming the step and a `-failure.png` screenshot.

import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.FERRY_CHROMIUM || '/usr/bin/chromium';
const STEP_TIMEOUT = 30_000;

export function log(msg) {
  console.log(`e2e: ${msg}`);
}

/**
 * Runs `body({ page, profile, step })` in a fresh headless Chromium and
 * exits the process: 0 when it returns with no page error, 1 otherwise.
 * `step(name)` names what is being done, for the failure message.
 */
export async function run(shot, body) {
  const profile = mkdtempSync(join(tmpdir(), 'ferry-e2e-'));
  mkdirSync(dirname(shot), { recursive: true });
  let context;
  let page;
  let current = 'launching Chromium';
  const problems = [];
  let code = 0;
  try {
    // playwright adds --headless (headless: true) and --user-data-dir (the
    // fresh profile) itself and refuses them in `args`
    context = await chromium.launchPersistentContext(profile, {
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
      ],
      viewport: { width: 1280, height: 900 },
      acceptDownloads: true,
    });
    context.setDefaultTimeout(STEP_TIMEOUT);
    page = context.pages()[0] || (await context.newPage());
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => {
      // refused API calls (a 401 probe, a 403, a 415 upload) log "Failed to
      // load resource"; anything else at error level is a bug
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`console: ${m.text()}`);
    });
    await body({ page, profile, step: (name) => { current = name; } });
    if (problems.length) throw new Error(problems.join('\n'));
    log('ok');
  } catch (e) {
    code = 1;
    console.error(`e2e: FAILED while ${current}: ${e && e.message ? e.message : e}`);
    if (problems.length) console.error(problems.join('\n'));
    if (page) {
      const failure = shot.replace(/\.png$/, '') + '-failure.png';
      try {
        await page.screenshot({ path: failure, fullPage: true });
        console.error(`e2e: screenshot of the failure: ${failure}`);
      } catch (_) { /* the browser is gone */ }
    }
  } finally {
    if (context) await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  }
  process.exit(code);
}

/** Pastes `token` into the sign-in form and waits for the search view. */
export async function signIn(page, token) {
  await page.getByLabel('Access token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('searchbox', { name: 'Patient name' }).waitFor();
}

export async function signOut(page) {
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('Access token').waitFor();
  if (await page.evaluate(() => sessionStorage.getItem('ferry.token')) !== null) throw new Error('token kept after sign-out');
}
