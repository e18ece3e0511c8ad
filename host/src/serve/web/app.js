// ferry's web page. Vanilla JavaScript, no dependencies, no build step.
//
// Views (hash routes, so Back works): `#/` search, `#/patient/GUID` images,
// `#/patient/GUID/log` the sync log. Every API call carries the bearer token
// from sessionStorage; images are fetched with it and shown as object URLs
// (an <img> cannot send an Authorization header). Text from the API is only
// ever set with textContent.
'use strict';

(() => {
  const API = '/api/v1';
  const TOKEN_KEY = 'ferry.token';
  const PREVIEW_SIZE = 384;
  const LARGE_SIZE = 1600;
  const PARALLEL_PREVIEWS = 4;

  const $ = (id) => document.getElementById(id);
  const el = (tag, props = {}, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props)) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('aria-') || k.startsWith('data-')) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  };

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    authOff: false,
    names: new Map(),          // patientGuid -> display name, from searches
    lastQuery: '',
    lastResults: null,
    patient: null,             // { guid, images: [], next, logNext }
    urls: new Set(),           // object URLs to revoke when leaving a patient
    generation: 0,             // bumps on navigation; stale loads stop
  };

  // ------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function api(path, { method = 'GET', accept = 'application/json', token = state.token } = {}) {
    const headers = { Accept: accept };
    if (token && !state.authOff) headers.Authorization = `Bearer ${token}`;
    let res;
    try {
      res = await fetch(path, { method, headers, cache: 'no-cache' });
    } catch (e) {
      throw new ApiError(0, 'The ferry service cannot be reached. Is it running?');
    }
    if (!res.ok) {
      let detail = `${res.status} ${res.statusText}`;
      try {
        const p = await res.json();
        if (p && p.detail) detail = p.detail;
      } catch (_) { /* not a problem document */ }
      throw new ApiError(res.status, detail);
    }
    return res;
  }
  const json = async (path, opts) => (await api(path, opts)).json();

  // ------------------------------------------------------------ messages

  function say(text) {
    $('status').textContent = text;
  }
  function alertBox(text) {
    const a = $('alert');
    a.textContent = text || '';
    a.hidden = !text;
  }

  /** Shows an API error; a 401 sends the user back to sign in. */
  function fail(e, what) {
    if (e instanceof ApiError && e.status === 401 && !state.authOff) {
      signOut(`Your token was not accepted (${e.message}). Please sign in again.`);
      return;
    }
    let text = e.message || String(e);
    if (e instanceof ApiError && e.status === 403) text = `Not allowed: ${text}`;
    else if (e instanceof ApiError && e.status === 404) text = `Not found: ${text}`;
    alertBox(what ? `${what}: ${text}` : text);
    say('');
  }

  // ------------------------------------------------------------ views

  const VIEWS = ['view-loading', 'view-signin', 'view-search', 'view-patient'];
  function show(view) {
    for (const v of VIEWS) $(v).hidden = v !== view;
  }
  function focusHeading(id) {
    const h = $(id);
    if (h) h.focus({ preventScroll: false });
  }

  function updateBar() {
    const signedIn = state.authOff || !!state.token;
    $('dev-note').hidden = !state.authOff;
    $('sign-out').hidden = state.authOff || !state.token;
    const who = $('who');
    who.hidden = !signedIn;
    who.textContent = state.authOff ? 'Authentication off' : (state.token ? describeToken(state.token) : '');
  }

  /** "Signed in as alice (operator)", read from the token's payload (display only; the server checks it). */
  function describeToken(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
      const claims = JSON.parse(new TextDecoder().decode(bytes));
      let roles = claims.roles;
      if (typeof roles === 'string') roles = roles.split(/[\s,]+/);
      const role = Array.isArray(roles) ? ['admin', 'operator', 'viewer'].find((r) => roles.map(String).map((x) => x.toLowerCase()).includes(r)) : null;
      const sub = typeof claims.sub === 'string' ? claims.sub : 'unknown';
      return role ? `Signed in as ${sub} (${role})` : `Signed in as ${sub}`;
    } catch (_) {
      return 'Signed in';
    }
  }

  function signOut(message) {
    state.token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    leavePatient();
    updateBar();
    show('view-signin');
    const err = $('signin-error');
    err.textContent = message || '';
    err.hidden = !message;
    alertBox('');
    say(message ? '' : 'Signed out.');
    if (location.hash && location.hash !== '#/') history.replaceState(null, '', '#/');
    $('token').focus();
  }

  // ------------------------------------------------------------ start

  const PROBE = `${API}/patients?name=x&limit=1`;

  async function start() {
    try {
      if (state.token) {
        await api(PROBE);
      } else {
        // no token: does the server want one? (dev mode answers 200)
        const res = await fetch(PROBE, { headers: { Accept: 'application/json' }, cache: 'no-cache' });
        if (res.ok) state.authOff = true;
        else if (res.status !== 401 && res.status !== 403) throw new ApiError(res.status, `the service answered ${res.status}`);
      }
    } catch (e) {
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
        updateBar();
        signOut(e.status === 401
          ? 'Your session has ended (the token was not accepted). Please sign in again.'
          : `This token may not be used here: ${e.message}`);
        return;
      }
      updateBar();
      show('view-loading');
      $('loading-title').textContent = 'ferry is not available';
      fail(e);
      return;
    }
    updateBar();
    if (!state.authOff && !state.token) {
      show('view-signin');
      $('token').focus();
      return;
    }
    route();
  }

  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const err = $('signin-error');
    let token = $('token').value.trim().replace(/^bearer\s+/i, '');
    if (!token) {
      err.textContent = 'Paste a token first.';
      err.hidden = false;
      $('token').focus();
      return;
    }
    const button = ev.submitter || $('signin-form').querySelector('button');
    button.disabled = true;
    say('Checking the token…');
    try {
      await api(PROBE, { token });
      state.token = token;
      sessionStorage.setItem(TOKEN_KEY, token);
      $('token').value = '';
      err.hidden = true;
      updateBar();
      say('Signed in.');
      alertBox('');
      if (location.hash && location.hash !== '#/') route();
      else showSearch(true);
    } catch (e) {
      err.textContent = e instanceof ApiError && (e.status === 401 || e.status === 403)
        ? `This token is not accepted: ${e.message}`
        : e.message;
      err.hidden = false;
      say('');
      $('token').focus();
    } finally {
      button.disabled = false;
    }
  });

  $('sign-out').addEventListener('click', () => signOut());

  // ------------------------------------------------------------ routing

  function route() {
    if (!state.authOff && !state.token) {
      show('view-signin');
      return;
    }
    alertBox('');
    say('');
    const m = location.hash.match(/^#\/patient\/([^/]+)(\/log)?$/);
    if (m) {
      let guid;
      try { guid = decodeURIComponent(m[1]); } catch (_) { guid = m[1]; }
      openPatient(guid, m[2] ? 'log' : 'images');
    } else {
      leavePatient();
      showSearch(false);
    }
  }
  window.addEventListener('hashchange', route);

  // ------------------------------------------------------------ search

  function showSearch(focus) {
    show('view-search');
    document.title = 'ferry · Find a patient';
    if (state.lastResults) renderResults(state.lastResults);
    if (focus) $('q').focus();
  }

  $('search-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const q = $('q').value.trim();
    alertBox('');
    if (!q) {
      say('Type the start of a name.');
      $('q').focus();
      return;
    }
    const button = ev.submitter || $('search-form').querySelector('button');
    button.disabled = true;
    say('Searching…');
    try {
      const hits = await json(`${API}/patients?name=${encodeURIComponent(q)}`);
      state.lastQuery = q;
      state.lastResults = hits;
      renderResults(hits);
      say(hits.length === 0 ? `No patient found for “${q}”.`
        : `${hits.length} patient${hits.length === 1 ? '' : 's'} found.`);
    } catch (e) {
      fail(e, 'Search failed');
    } finally {
      button.disabled = false;
    }
  });

  function renderResults(hits) {
    const ul = $('results');
    ul.replaceChildren();
    for (const h of hits) {
      state.names.set(h.patientGuid, h.name);
      const count = `${h.imageCount} image${h.imageCount === 1 ? '' : 's'}`;
      ul.append(el('li', {},
        el('a', { href: `#/patient/${encodeURIComponent(h.patientGuid)}` },
          el('span', { class: 'name', text: h.name || h.patientGuid }),
          el('span', { class: 'count', text: count }))));
    }
  }

  // ------------------------------------------------------------ patient

  function leavePatient() {
    state.generation++;
    for (const u of state.urls) URL.revokeObjectURL(u);
    state.urls.clear();
    state.patient = null;
    previewQueue.length = 0;
    if (observer) observer.disconnect();
  }

  function openPatient(guid, tab) {
    const same = state.patient && state.patient.guid === guid;
    if (!same) {
      leavePatient();
      state.patient = { guid, images: [], next: null, logNext: null, logLoaded: false };
      const name = state.names.get(guid);
      $('patient-title').textContent = name || 'Patient';
      $('patient-guid').textContent = guid;
      document.title = `ferry · ${name || guid}`;
      $('grid').replaceChildren();
      $('log-body').replaceChildren();
      $('log-table').hidden = true;
      $('log-message').hidden = true;
      $('images-empty').hidden = true;
      $('images-more').hidden = true;
      $('log-more').hidden = true;
      $('job-status').hidden = true;
      show('view-patient');
      focusHeading('patient-title');
      loadImages(`${API}/patients/${encodeURIComponent(guid)}/images`);
    }
    selectTab(tab, false);
  }

  async function loadImages(url) {
    const gen = state.generation;
    const p = state.patient;
    say('Loading images…');
    $('images-more').disabled = true;
    try {
      const page = await json(url);
      if (gen !== state.generation) return;
      p.images.push(...page.images);
      p.next = page.next || null;
      for (const img of page.images) $('grid').append(tile(img));
      $('images-empty').hidden = p.images.length > 0;
      $('images-more').hidden = !p.next;
      say(`${p.images.length} image${p.images.length === 1 ? '' : 's'}${p.next ? ' so far' : ''}.`);
    } catch (e) {
      if (gen !== state.generation) return;
      fail(e, 'Could not load the images');
    } finally {
      $('images-more').disabled = false;
    }
  }
  $('images-more').addEventListener('click', () => {
    if (state.patient && state.patient.next) loadImages(state.patient.next);
  });

  function formatDate(d) {
    if (!d) return '';
    const m = /^(\d{4})-?(\d{2})-?(\d{2})$/.exec(d);
    if (!m) return d;
    const date = new Date(Date.UTC(+m[1], +m[2] - 1, +m[3]));
    return date.toLocaleDateString(undefined, { year: 'numeric', month: 'short', day: 'numeric', timeZone: 'UTC' });
  }
  const MODALITIES = { IO: 'Intra-oral', PX: 'Panoramic', DX: 'Radiograph', CR: 'Radiograph', CT: 'CT', OP: 'Photo', XC: 'Photo' };
  const modality = (m) => (m ? (MODALITIES[m] ? `${MODALITIES[m]} (${m})` : m) : '');
  function formatBytes(n) {
    if (n == null) return '';
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }
  const title = (img) => img.displayName || img.name;
  const describe = (img) => [title(img), modality(img.modality), formatDate(img.studyDate)].filter(Boolean).join(', ');

  function tile(img) {
    const thumb = el('span', { class: 'thumb', 'aria-busy': 'true', text: 'Loading…' });
    const button = el('button', { type: 'button', 'aria-label': `Open ${describe(img)}` },
      thumb,
      el('span', { class: 'caption' },
        el('strong', { text: title(img) }),
        el('span', { text: [formatDate(img.studyDate), img.modality].filter(Boolean).join(' · ') || '\u00a0' })));
    button.addEventListener('click', () => openViewer(img, button));
    const li = el('li', {}, button);
    li.dataset.preview = `${img.previewHref}?size=${PREVIEW_SIZE}`;
    li.dataset.alt = describe(img);
    observe(li);
    return li;
  }

  // previews: fetched when a tile comes into view, a few at a time
  const previewQueue = [];
  let previewsActive = 0;
  const observer = 'IntersectionObserver' in window
    ? new IntersectionObserver((entries) => {
      for (const e of entries) {
        if (e.isIntersecting) {
          observer.unobserve(e.target);
          enqueuePreview(e.target);
        }
      }
    }, { rootMargin: '200px' })
    : null;
  function observe(li) {
    if (observer) observer.observe(li);
    else enqueuePreview(li);
  }
  function enqueuePreview(li) {
    previewQueue.push([li, state.generation]);
    pumpPreviews();
  }
  function pumpPreviews() {
    while (previewsActive < PARALLEL_PREVIEWS && previewQueue.length) {
      const [li, gen] = previewQueue.shift();
      if (gen !== state.generation) continue;
      previewsActive++;
      loadPreview(li, gen).finally(() => {
        previewsActive--;
        pumpPreviews();
      });
    }
  }
  async function loadPreview(li, gen) {
    const thumb = li.querySelector('.thumb');
    try {
      const blob = await (await api(li.dataset.preview, { accept: 'image/png' })).blob();
      if (gen !== state.generation) return;
      const url = URL.createObjectURL(blob);
      state.urls.add(url);
      const img = el('img', { alt: li.dataset.alt, src: url, decoding: 'async' });
      thumb.replaceChildren(img);
      thumb.removeAttribute('aria-busy');
    } catch (e) {
      if (gen !== state.generation) return;
      thumb.removeAttribute('aria-busy');
      if (e instanceof ApiError && e.status === 401) return fail(e);
      thumb.textContent = e instanceof ApiError && e.status === 422 ? 'No preview' : 'Preview failed';
      thumb.title = e.message;
    }
  }

  // ------------------------------------------------------------ tabs

  const TABS = [['images', 'tab-images', 'panel-images'], ['log', 'tab-log', 'panel-log']];
  function selectTab(name, focus) {
    for (const [n, tab, panel] of TABS) {
      const on = n === name;
      $(tab).setAttribute('aria-selected', String(on));
      $(tab).tabIndex = on ? 0 : -1;
      $(panel).hidden = !on;
      if (on && focus) $(tab).focus();
    }
    if (name === 'log' && state.patient && !state.patient.logLoaded) {
      state.patient.logLoaded = true;
      loadLog(`${API}/patients/${encodeURIComponent(state.patient.guid)}/logs`);
    }
  }
  function tabTo(name) {
    if (!state.patient) return;
    const target = `#/patient/${encodeURIComponent(state.patient.guid)}${name === 'log' ? '/log' : ''}`;
    if (location.hash !== target) history.replaceState(null, '', target);
    selectTab(name, true);
  }
  $('tab-images').addEventListener('click', () => tabTo('images'));
  $('tab-log').addEventListener('click', () => tabTo('log'));
  document.querySelector('[role=tablist]').addEventListener('keydown', (ev) => {
    const current = TABS.findIndex(([, tab]) => $(tab).getAttribute('aria-selected') === 'true');
    let next = null;
    if (ev.key === 'ArrowRight') next = (current + 1) % TABS.length;
    else if (ev.key === 'ArrowLeft') next = (current + TABS.length - 1) % TABS.length;
    else if (ev.key === 'Home') next = 0;
    else if (ev.key === 'End') next = TABS.length - 1;
    if (next !== null) {
      ev.preventDefault();
      tabTo(TABS[next][0]);
    }
  });

  // ------------------------------------------------------------ sync log

  const BAD = new Set(['error', 'failed', 'parked']);
  async function loadLog(url) {
    const gen = state.generation;
    const msg = $('log-message');
    say('Loading the sync log…');
    $('log-more').disabled = true;
    try {
      const page = await json(url);
      if (gen !== state.generation) return;
      const body = $('log-body');
      for (const e of page.entries) body.append(logRow(e));
      const any = body.children.length > 0;
      $('log-table').hidden = !any;
      msg.hidden = any;
      msg.textContent = any ? '' : 'The sync log has no entries for this patient.';
      state.patient.logNext = page.next || null;
      $('log-more').hidden = !page.next;
      const bad = body.querySelectorAll('tr.bad').length;
      say(`${body.children.length} log entr${body.children.length === 1 ? 'y' : 'ies'}${bad ? `, ${bad} with problems` : ''}.`);
    } catch (e) {
      if (gen !== state.generation) return;
      if (e instanceof ApiError && e.status === 403) {
        msg.textContent = `The sync log is not available with this token: ${e.message}`;
        msg.hidden = false;
        say('');
        state.patient.logLoaded = false;
        return;
      }
      state.patient.logLoaded = false;
      fail(e, 'Could not load the sync log');
    } finally {
      $('log-more').disabled = false;
    }
  }
  $('log-more').addEventListener('click', () => {
    if (state.patient && state.patient.logNext) loadLog(state.patient.logNext);
  });

  function logRow(e) {
    const problem = BAD.has(e.status) || e.action === 'quarantine';
    const warn = !problem && e.status === 'warning';
    const when = new Date(e.at);
    const time = el('time', { dateTime: e.at, text: isNaN(when) ? e.at : when.toLocaleString() });
    const status = el('span', { class: 'pill', text: problem ? `⚠ ${e.status}` : e.status });
    const tr = el('tr', { class: problem ? 'bad' : (warn ? 'warn' : '') },
      el('td', {}, time),
      el('td', { text: e.action }),
      el('td', {}, status),
      el('td', {}, el('code', { text: e.itemId })),
      el('td', { text: e.details || '' }));
    return tr;
  }

  // ------------------------------------------------------------ re-sync

  $('resync').addEventListener('click', async () => {
    const p = state.patient;
    if (!p) return;
    const button = $('resync');
    const box = $('job-status');
    const gen = state.generation;
    button.disabled = true;
    box.hidden = false;
    box.className = 'job';
    box.textContent = 'Asking for a re-sync…';
    say('Asking for a re-sync…');
    try {
      const res = await api(`${API}/patients/${encodeURIComponent(p.guid)}/sync`, { method: 'POST' });
      const accepted = await res.json();
      const href = accepted.href || `${API}/jobs/${encodeURIComponent(accepted.jobId)}`;
      let job = accepted;
      for (;;) {
        const line = jobLine(job);
        box.textContent = line;
        say(line);
        if (job.state === 'done' || job.state === 'failed') break;
        await new Promise((r) => setTimeout(r, 1000));
        if (gen !== state.generation) return;
        job = await json(href);
      }
      box.className = job.state === 'done' ? 'job good' : 'job bad';
      if (job.state === 'done') {
        // show what the re-sync did
        p.logLoaded = false;
        $('log-body').replaceChildren();
        p.images = [];
        $('grid').replaceChildren();
        for (const u of state.urls) URL.revokeObjectURL(u);
        state.urls.clear();
        await loadImages(`${API}/patients/${encodeURIComponent(p.guid)}/images`);
        if (!$('panel-log').hidden) selectTab('log', false);
        say(jobLine(job));
      }
    } catch (e) {
      if (gen !== state.generation) return;
      box.className = 'job bad';
      if (e instanceof ApiError && e.status === 403) {
        box.textContent = `Re-sync is not allowed with this token: ${e.message}`;
        say('');
      } else {
        box.hidden = true;
        fail(e, 'Re-sync failed');
      }
    } finally {
      button.disabled = false;
    }
  });

  function jobLine(job) {
    const c = job.counts || {};
    const parts = ['stored', 'unchanged', 'skipped', 'unresolved', 'quarantined', 'failed']
      .filter((k) => c[k]).map((k) => `${c[k]} ${k}`);
    const counts = parts.length ? ` (${parts.join(', ')})` : '';
    switch (job.state) {
      case 'queued': return `Re-sync queued: ${job.itemsTotal} item${job.itemsTotal === 1 ? '' : 's'}, waiting for the pass under way…`;
      case 'running': return `Re-sync running${counts}…`;
      case 'done': return `Re-sync done${counts}.`;
      case 'failed': {
        const errors = (job.errors || []).join('; ');
        const failed = (job.items || []).filter((i) => i.outcome === 'failed').map((i) => `${i.itemId}: ${i.detail}`).join('; ');
        return `Re-sync failed${counts}. ${errors || failed}`.trim();
      }
      default: return `Re-sync: ${job.state}`;
    }
  }

  // ------------------------------------------------------------ viewer

  let viewerReturn = null;
  let viewerImg = null;
  async function openViewer(img, from) {
    const gen = state.generation;
    viewerReturn = from;
    viewerImg = img;
    const dialog = $('viewer');
    $('viewer-title').textContent = title(img);
    const meta = $('viewer-meta');
    meta.replaceChildren();
    const rows = [
      ['File', img.name],
      ['Modality', modality(img.modality) || 'unknown'],
      ['Study date', formatDate(img.studyDate) || 'unknown'],
      ['Pixels', img.columns && img.rows ? `${img.columns} × ${img.rows}` : 'unknown'],
      ['File size', formatBytes(img.size)],
      ['Patient id', state.patient ? state.patient.guid : ''],
    ];
    for (const [k, v] of rows) meta.append(el('dt', { text: k }), el('dd', { text: v }));
    const large = $('viewer-img');
    large.removeAttribute('src');
    large.alt = describe(img);
    large.hidden = true;
    const loading = $('viewer-loading');
    loading.textContent = 'Loading the image…';
    loading.hidden = false;
    $('download-status').textContent = '';
    if (!dialog.open) dialog.showModal();
    $('download').focus();
    try {
      const blob = await (await api(`${img.previewHref}?size=${LARGE_SIZE}`, { accept: 'image/png' })).blob();
      if (gen !== state.generation || viewerImg !== img) return;
      const url = URL.createObjectURL(blob);
      state.urls.add(url);
      large.src = url;
      large.hidden = false;
      loading.hidden = true;
    } catch (e) {
      if (gen !== state.generation || viewerImg !== img) return;
      if (e instanceof ApiError && e.status === 401) {
        dialog.close();
        return fail(e);
      }
      loading.textContent = `No preview: ${e.message}`;
    }
  }
  $('viewer-close').addEventListener('click', () => $('viewer').close());
  $('viewer').addEventListener('close', () => {
    viewerImg = null;
    if (viewerReturn && document.contains(viewerReturn)) viewerReturn.focus();
  });
  // a click on the backdrop closes
  $('viewer').addEventListener('click', (ev) => {
    if (ev.target === $('viewer')) $('viewer').close();
  });

  $('download').addEventListener('click', async () => {
    const img = viewerImg;
    if (!img) return;
    const button = $('download');
    const status = $('download-status');
    button.disabled = true;
    status.textContent = `Downloading ${formatBytes(img.size)}…`;
    try {
      const blob = await (await api(img.href, { accept: 'application/dicom' })).blob();
      const url = URL.createObjectURL(blob);
      const a = el('a', { href: url, download: img.name.endsWith('.dcm') ? img.name : `${img.name}.dcm` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      status.textContent = `Downloaded ${img.name}.`;
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        $('viewer').close();
        return fail(e);
      }
      status.textContent = e instanceof ApiError && e.status === 0
        ? 'The download failed. (With [serve] presign = true the file comes from the bucket, which this page cannot reach.)'
        : `The download failed: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  });

  $('home-link').addEventListener('click', () => {
    if (location.hash === '#/' || location.hash === '') {
      route();
      $('q').focus();
    }
  });

  start();
})();
