// The records tabs of ferry's web page in headless Chromium.
//
//   node tests/browser/records.mjs URL TOKENS_JSON SCREENSHOT_PATH
//
// TOKENS_JSON: {"admin": …, "owner": …, "colleague": …, "patient": NAME,
// "colleagueSub": …}. Run by `tests/service/browser.rs` against a service
// with patient records, where `owner` (a practitioner) owns the patient
// NAME and `colleague` is another practitioner. Walks what each of them
// does on the page: the admin manages users; the owner uploads, opens,
// shares, deletes and requests documents; the colleague reads what was
// shared with them.

import { log, run, signIn, signOut } from './lib.mjs';

const [url, tokensJson, shot] = process.argv.slice(2);
if (!url || !tokensJson || !shot) {
  console.error('usage: node records.mjs URL TOKENS_JSON SCREENSHOT_PATH');
  process.exit(2);
}
const t = JSON.parse(tokensJson);

// a one-page PDF, valid enough for any reader (offsets computed below)
function pdf(text) {
  const objs = [
    '<< /Type /Catalog /Pages 2 0 R >>',
    '<< /Type /Pages /Kids [3 0 R] /Count 1 >>',
    '<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>',
    null,
    '<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>',
  ];
  const stream = `BT /F1 24 Tf 72 760 Td (${text}) Tj ET`;
  objs[3] = `<< /Length ${stream.length} >>\nstream\n${stream}\nendstream`;
  let out = '%PDF-1.4\n';
  const offsets = [];
  objs.forEach((o, i) => {
    offsets.push(out.length);
    out += `${i + 1} 0 obj\n${o}\nendobj\n`;
  });
  const xref = out.length;
  out += `xref\n0 ${objs.length + 1}\n0000000000 65535 f \n`;
  for (const off of offsets) out += `${String(off).padStart(10, '0')} 00000 n \n`;
  out += `trailer\n<< /Size ${objs.length + 1} /Root 1 0 R >>\nstartxref\n${xref}\n%%EOF\n`;
  return Buffer.from(out, 'latin1');
}

const row = (page, text) => page.locator('#docs-body tr', { hasText: text });

await run(shot, async ({ page, step }) => {
  page.on('dialog', (d) => d.accept()); // the confirm() before a delete

  step('opening the page');
  const res = await page.goto(url, { waitUntil: 'domcontentloaded' });
  if (!res || res.status() !== 200) throw new Error(`GET / answered ${res && res.status()}`);
  await page.getByLabel('Access token').waitFor();

  // ---------------------------------------------------------------- admin
  step('signing in as the admin');
  await signIn(page, t.admin);
  await page.getByRole('link', { name: 'Users' }).waitFor();

  step('listing the users');
  await page.getByRole('link', { name: 'Users' }).click();
  await page.locator('#users-body tr', { hasText: t.ownerSub }).waitFor();
  await page.locator('#users-body tr', { hasText: t.colleagueSub }).waitFor();
  log(`users: ${await page.locator('#users-body tr').count()}`);

  step('adding a user');
  const uf = page.locator('#user-form');
  await uf.getByLabel('User id').fill('dr-new');
  await uf.getByLabel('Name', { exact: true }).fill('Dr. Neu');
  await uf.getByLabel('E-mail').fill('neu@praxis.example');
  await uf.getByLabel('Type', { exact: true }).selectOption('practitioner');
  await uf.getByLabel('Profession').fill('Dietician');
  await uf.getByRole('button', { name: 'Add user' }).click();
  const added = page.locator('#users-body tr', { hasText: 'dr-new' });
  await added.waitFor();
  if (!(await added.textContent()).includes('Dietician')) throw new Error('the new user has no profession');

  step('refusing a user without an e-mail address');
  await uf.getByLabel('User id').fill('dr-bad');
  await uf.getByLabel('Name', { exact: true }).fill('Dr. Bad');
  await uf.getByLabel('E-mail').fill('not-an-address');
  await uf.getByRole('button', { name: 'Add user' }).click();
  await page.locator('#user-status', { hasText: 'Not saved' }).waitFor();
  log(`refused: ${await page.locator('#user-status').textContent()}`);

  step('editing the user');
  await page.getByRole('button', { name: 'Edit dr-new' }).click();
  await uf.getByLabel('Profession').fill('Dentist');
  await uf.getByRole('button', { name: 'Save' }).click();
  await page.locator('#users-body tr', { hasText: 'Dentist' }).waitFor();

  step('deleting the user');
  await page.getByRole('button', { name: 'Delete dr-new' }).click();
  await added.waitFor({ state: 'detached' });
  log('a user added, refused, edited and deleted');
  await signOut(page);

  // ---------------------------------------------------------------- the owner
  step('signing in as the practitioner');
  await signIn(page, t.owner);
  if (!(await page.getByRole('link', { name: 'Users' }).isHidden())) throw new Error('a practitioner is offered the users page');
  const mine = page.locator('#results a', { hasText: t.patient });
  await mine.waitFor();
  log(`own patients: ${await page.locator('#list-note').textContent()}`);

  step('opening the documents tab');
  await mine.click();
  await page.getByRole('tab', { name: 'Documents' }).click();
  await page.locator('#docs-message', { hasText: 'No documents' }).waitFor();
  if (!/\/documents$/.test(page.url())) throw new Error(`the tab is not in the address: ${page.url()}`);

  step('uploading a PDF');
  await page.locator('#upload-form').getByLabel('File', { exact: true }).setInputFiles({ name: 'befund.pdf', mimeType: 'application/pdf', buffer: pdf('Befund 2026') });
  await page.locator('#upload-form').getByLabel('Title').fill('Befund Labor');
  await page.getByLabel('Date of the document').fill('2026-11-30');
  await page.getByRole('button', { name: 'Upload' }).click();
  await row(page, 'Befund Labor').waitFor();
  log(`uploaded: ${await page.locator('#upload-status').textContent()}`);

  step('uploading a picture');
  const png = await page.screenshot({ clip: { x: 0, y: 0, width: 320, height: 200 } });
  await page.locator('#upload-form').getByLabel('File', { exact: true }).setInputFiles({ name: 'foto.png', mimeType: 'image/png', buffer: png });
  await page.locator('#upload-form').getByLabel('Title').fill('Foto Zahnstatus');
  await page.getByRole('button', { name: 'Upload' }).click();
  await row(page, 'Foto Zahnstatus').waitFor();

  step('refusing a renamed executable');
  const exe = Buffer.concat([Buffer.from('MZ\x90\x00', 'latin1'), Buffer.alloc(512, 1)]);
  await page.locator('#upload-form').getByLabel('File', { exact: true }).setInputFiles({ name: 'rechnung.pdf', mimeType: 'application/pdf', buffer: exe });
  await page.getByRole('button', { name: 'Upload' }).click();
  await page.locator('#upload-status', { hasText: 'refused' }).waitFor();
  if ((await page.locator('#docs-body tr').count()) !== 2) throw new Error('the refused file is listed');
  log(`refused: ${await page.locator('#upload-status').textContent()}`);

  await page.screenshot({ path: shot.replace(/\.png$/, '') + '-documents.png', fullPage: true });

  step('opening the picture');
  await row(page, 'Foto Zahnstatus').getByRole('button', { name: 'Open Foto Zahnstatus' }).click();
  const viewer = page.getByRole('dialog', { name: 'Foto Zahnstatus' });
  await viewer.waitFor();
  await page.waitForFunction(() => {
    const i = document.querySelector('#doc-frame img');
    return i && i.complete && i.naturalWidth === 320 && i.src.startsWith('blob:');
  });
  await page.keyboard.press('Escape');
  await viewer.waitFor({ state: 'hidden' });

  step('opening the PDF');
  await row(page, 'Befund Labor').getByRole('button', { name: 'Open Befund Labor' }).click();
  const pdfViewer = page.getByRole('dialog', { name: 'Befund Labor' });
  await pdfViewer.waitFor();
  const frame = page.locator('#doc-frame iframe');
  await frame.waitFor();
  if (!(await frame.getAttribute('src')).startsWith('blob:')) throw new Error('the PDF is not shown from an object URL');
  const meta = await pdfViewer.locator('dl').innerText();
  if (!meta.includes('befund.pdf') || !meta.includes('PDF')) throw new Error(`metadata: ${meta}`);
  await page.waitForTimeout(1500); // let Chromium's PDF viewer paint for the screenshot
  await page.screenshot({ path: shot });
  await page.keyboard.press('Escape');
  await pdfViewer.waitFor({ state: 'hidden' });

  step('sharing the PDF');
  await row(page, 'Befund Labor').getByRole('button', { name: 'Share Befund Labor' }).click();
  const share = page.getByRole('dialog', { name: /Share/ });
  await share.waitFor();
  await share.locator('#shares-empty').waitFor();
  await share.getByLabel('Practitioner').fill('nobody-registered');
  await share.getByRole('button', { name: 'Share', exact: true }).click();
  await share.locator('#share-status', { hasText: 'Not shared' }).waitFor();
  await share.getByLabel('Practitioner').fill(t.colleagueSub);
  await share.getByLabel('Note for them').fill('Bitte ansehen');
  await share.getByRole('button', { name: 'Share', exact: true }).click();
  await share.locator('#shares-list li', { hasText: t.colleagueSub }).waitFor();
  log(`shared: ${await share.locator('#share-status').textContent()}`);
  await share.getByRole('button', { name: 'Close' }).click();

  step('deleting the picture');
  await row(page, 'Foto Zahnstatus').getByRole('button', { name: 'Delete Foto Zahnstatus' }).click();
  await row(page, 'Foto Zahnstatus').waitFor({ state: 'detached' });

  step('requesting documents from the provider');
  await page.locator('#request-form').getByLabel('What is needed').fill('Röntgenbefund Oktober 2026');
  await page.locator('#request-form').getByLabel('Note', { exact: true }).fill('für die Behandlungsplanung');
  await page.getByRole('button', { name: 'Request documents' }).click();
  await page.locator('#request-status', { hasText: 'Request sent' }).waitFor();
  log(await page.locator('#request-status').textContent());

  step('finding the request in the sync log');
  await page.getByRole('tab', { name: 'Sync log' }).click();
  await page.locator('#log-body tr', { hasText: 'request' }).first().waitFor();
  await signOut(page);

  // ---------------------------------------------------------------- the colleague
  step('signing in as the colleague');
  await signIn(page, t.colleague);
  await page.locator('#list-note', { hasText: 'no patients' }).waitFor();

  step('reading what was shared');
  await page.getByRole('link', { name: 'Shared with me' }).click();
  const shared = page.locator('#shared-body tr', { hasText: 'Befund Labor' });
  await shared.waitFor();
  if (!(await shared.textContent()).includes('Bitte ansehen')) throw new Error('the share note is not shown');
  if ((await page.locator('#shared-body tr').count()) !== 1) throw new Error('more than the one share is listed');
  await shared.getByRole('button', { name: 'Open Befund Labor' }).click();
  await page.locator('#doc-frame iframe').waitFor();
  await page.keyboard.press('Escape');
  await signOut(page);
});
