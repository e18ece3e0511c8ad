// End-to-end test of ferry's web page in headless Chromium.
//
//   node tests/browser/e2e.mjs URL TOKEN SCREENSHOT_PATH
//
// Run by `tests/service/browser.rs` against a service over the demo site,
// with an operator token. Uses Debian's /usr/bin/chromium through
// playwright-core (which never downloads a browser) with a fresh profile.
// Exits non-zero with a message (and a `-failure.png` screenshot) when a
// step fails.

import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { log, run, signIn, signOut } from './lib.mjs';

const [url, token, shot] = process.argv.slice(2);
if (!url || !token || !shot) {
  console.error('usage: node e2e.mjs URL TOKEN SCREENSHOT_PATH');
  process.exit(2);
}

await run(shot, async ({ page, profile, step: named }) => {
  named('opening the page');
  const res = await page.goto(url, { waitUntil: 'domcontentloaded' });
  if (!res || res.status() !== 200) throw new Error(`GET / answered ${res && res.status()}`);
  const csp = res.headers()['content-security-policy'] || '';
  if (!csp.includes("script-src 'self'")) throw new Error(`no Content-Security-Policy on the page: ${csp}`);

  named('seeing the sign-in form');
  await page.getByLabel('Access token').waitFor();
  log('sign-in form shown (the server wants a token)');

  named('refusing a bad token');
  await page.getByLabel('Access token').fill('not-a-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#signin-error', { hasText: 'not accepted' }).waitFor();
  log('a bad token is refused with a visible message');

  named('signing in');
  await signIn(page, token);
  const who = await page.locator('#who').textContent();
  if (!/operator|viewer|admin/.test(who)) throw new Error(`the bar does not say who is signed in: ${who}`);
  if (await page.evaluate(() => sessionStorage.getItem('ferry.token')) === null) throw new Error('token not kept in sessionStorage');
  log(`signed in: ${who}`);

  named('searching "mull"');
  await page.getByRole('searchbox', { name: 'Patient name' }).fill('mull');
  await page.getByRole('searchbox', { name: 'Patient name' }).press('Enter');
  const hit = page.locator('#results a', { hasText: 'Müller' }).first();
  await hit.waitFor();
  const hitText = (await hit.textContent()).replace(/\s+/g, ' ');
  if (!/\d+ images?/.test(hitText)) throw new Error(`a result without an image count: ${hitText}`);
  await page.locator('#status', { hasText: 'found' }).waitFor();
  log(`found: ${hitText}`);

  named('opening the patient');
  await hit.click();
  await page.locator('#patient-title', { hasText: 'Müller' }).waitFor();
  const tiles = page.locator('#grid li');
  await tiles.first().waitFor();
  const count = await tiles.count();
  if (count < 1) throw new Error('no image tiles');

  named('waiting for every preview to load');
  await page.waitForFunction(
    (n) => {
      const imgs = [...document.querySelectorAll('#grid img')];
      return imgs.length === n && imgs.every((i) => i.complete && i.naturalWidth > 0);
    },
    count,
    { timeout: 60_000 },
  );
  const alts = await page.locator('#grid img').evaluateAll((imgs) => imgs.map((i) => i.alt));
  if (alts.some((a) => !a)) throw new Error('a preview without alt text');
  const blobs = await page.locator('#grid img').evaluateAll((imgs) => imgs.every((i) => i.src.startsWith('blob:')));
  if (!blobs) throw new Error('previews are not object URLs');
  log(`${count} previews loaded (${alts.join(' | ')})`);
  await page.screenshot({ path: shot.replace(/\.png$/, '') + '-grid.png' });

  named('reading the sync log');
  await page.getByRole('tab', { name: 'Sync log' }).click();
  await page.locator('#log-body tr').first().waitFor();
  const entries = await page.locator('#log-body tr').count();
  log(`sync log: ${entries} entries`);
  await page.getByRole('tab', { name: 'Images' }).click();

  named('opening one image');
  await tiles.first().getByRole('button').click();
  const dialog = page.getByRole('dialog');
  await dialog.waitFor();
  await dialog.locator('dt', { hasText: 'Modality' }).waitFor();
  const meta = await dialog.locator('dl').innerText();
  for (const k of ['File', 'Modality', 'Study date', 'Pixels', 'File size']) {
    if (!meta.includes(k)) throw new Error(`metadata without ${k}: ${meta}`);
  }
  await page.waitForFunction(() => {
    const i = document.getElementById('viewer-img');
    return !i.hidden && i.complete && i.naturalWidth > 0;
  });
  log(`metadata: ${meta.replace(/\s*\n\s*/g, ' ').trim()}`);

  named('downloading the DICOM');
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    dialog.getByRole('button', { name: 'Download DICOM' }).click(),
  ]);
  const saved = join(profile, 'download.dcm');
  await download.saveAs(saved);
  const bytes = readFileSync(saved);
  if (bytes.length < 132 || bytes.toString('latin1', 128, 132) !== 'DICM') throw new Error('the download is not a DICOM file');
  log(`downloaded ${download.suggestedFilename()} (${bytes.length} bytes, DICM)`);

  named('saving the screenshot');
  await page.screenshot({ path: shot });
  log(`screenshot: ${shot}`);

  named('closing the viewer with Escape');
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'hidden' });

  named('re-syncing the patient');
  await page.getByRole('button', { name: 'Re-sync patient' }).click();
  await page.locator('#job-status', { hasText: /Re-sync (done|failed)/ }).waitFor({ timeout: 120_000 });
  const job = await page.locator('#job-status').textContent();
  if (!job.includes('done')) throw new Error(`re-sync: ${job}`);
  log(job);

  named('signing out');
  await signOut(page);
});
