// ferry's web page. Vanilla JavaScript, no dependencies, no build step.
//
// Views (hash routes, so Back works): `#/` search (and the caller's own
// patients, for practitioners, patient users and admins), `#/patient/GUID`
// images, `#/patient/GUID/documents` documents, `#/patient/GUID/log` the
// sync log, `#/shared` documents shared with the caller, `#/users` the
// users (admins). What the page offers follows `GET /users/me`; what is
// allowed is decided by the server, and a refusal is shown as such.
// Every API call carries the bearer token
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
    me: null,                  // GET /users/me: { sub, role, type, user }
    patient: null,             // { guid, images: [], next, logNext, docsNext }
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

  async function api(path, { method = 'GET', accept = 'application/json', token = state.token, body, json: payload } = {}) {
    const headers = { Accept: accept };
    if (token && !state.authOff) headers.Authorization = `Bearer ${token}`;
    if (payload !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(payload);
    }
    let res;
    try {
      res = await fetch(path, { method, headers, body, cache: 'no-cache' });
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

  const VIEWS = ['view-loading', 'view-signin', 'view-search', 'view-patient', 'view-shared', 'view-users'];
  function show(view) {
    for (const v of VIEWS) $(v).hidden = v !== view;
  }
  function focusHeading(id) {
    const h = $(id);
    if (h) h.focus({ preventScroll: false });
  }

  // what the caller is, for what the page offers (the server decides)
  const me = () => state.me || { sub: '', role: 'viewer', type: 'staff' };
  const isAdmin = () => me().role === 'admin';
  const isPractitioner = () => me().type === 'practitioner';
  /** Callers with patient records: practitioners, patient users, admins. */
  const hasRecords = () => isAdmin() || isPractitioner() || me().type === 'patient';
  const mayAddDocuments = () => isAdmin() || isPractitioner();
  const mayChange = (doc) => isAdmin() || (isPractitioner() && doc.uploadedBy === me().sub);

  async function loadMe() {
    try {
      state.me = await json(`${API}/users/me`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) throw e;
      state.me = null; // an older service: the X-ray page only
    }
  }

  function updateBar() {
    const signedIn = state.authOff || !!state.token;
    const nav = $('nav');
    nav.hidden = !signedIn || !state.me;
    $('nav-shared').hidden = !(isPractitioner() || isAdmin());
    $('nav-users').hidden = !isAdmin();
    $('dev-note').hidden = !state.authOff;
    $('sign-out').hidden = state.authOff || !state.token;
    const who = $('who');
    who.hidden = !signedIn;
    const kind = state.me && state.me.type !== 'staff' ? `${state.me.type}, ` : '';
    who.textContent = state.authOff ? 'Authentication off'
      : (state.me ? `Signed in as ${state.me.sub} (${kind}${state.me.role})` : (state.token ? describeToken(state.token) : ''));
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
    state.me = null;
    state.lastResults = null;
    state.mine = null;
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
      if (state.token || state.authOff) await loadMe();
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
      await loadMe();
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
    closeDialogs();
    const m = location.hash.match(/^#\/patient\/([^/]+)(?:\/(log|documents))?$/);
    if (m) {
      let guid;
      try { guid = decodeURIComponent(m[1]); } catch (_) { guid = m[1]; }
      openPatient(guid, m[2] === 'log' ? 'log' : (m[2] === 'documents' ? 'docs' : 'images'));
    } else if (location.hash === '#/shared') {
      leavePatient();
      showShared();
    } else if (location.hash === '#/users') {
      leavePatient();
      showUsers();
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
    const note = $('list-note');
    if (state.lastResults) renderResults(state.lastResults);
    else if (hasRecords()) loadMine();
    else note.hidden = true;
    if (focus) $('q').focus();
  }

  /** Without a search: the caller's own patients (their records). */
  async function loadMine() {
    const note = $('list-note');
    note.hidden = false;
    note.textContent = 'Loading your patients…';
    try {
      const hits = await json(`${API}/patients?limit=200`);
      if (state.lastResults) return; // a search answered meanwhile
      renderResults(hits);
      note.textContent = hits.length === 0
        ? (isPractitioner() ? 'You have no patients yet.' : 'No patient records.')
        : (me().type === 'patient' ? 'Your record:' : `${isAdmin() ? 'Patient records' : 'Your patients'} (${hits.length}${hits.length === 200 ? '+' : ''}); search to narrow down.`);
    } catch (e) {
      note.hidden = true;
      if (e instanceof ApiError && e.status === 401) fail(e);
    }
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
      $('list-note').hidden = true;
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
      const count = `${h.imageCount} image${h.imageCount === 1 ? '' : 's'}${h.href ? ' · record' : ''}`;
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
      state.patient = { guid, images: [], next: null, logNext: null, logLoaded: false, docsNext: null, docsLoaded: false, docs: new Map() };
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
      $('docs-body').replaceChildren();
      $('docs-table').hidden = true;
      $('docs-message').hidden = true;
      $('docs-more').hidden = true;
      $('synced-section').hidden = true;
      $('tab-docs').hidden = !hasRecords();
      $('upload-form').hidden = !mayAddDocuments();
      $('request-form').hidden = !mayAddDocuments();
      $('upload-status').textContent = '';
      $('request-status').textContent = '';
      if (!name && hasRecords()) loadPatientName(guid);
      show('view-patient');
      focusHeading('patient-title');
      loadImages(`${API}/patients/${encodeURIComponent(guid)}/images`);
    }
    selectTab(tab === 'docs' && !hasRecords() ? 'images' : tab, false);
  }

  /** The record's name, when the patient was opened from a link. */
  async function loadPatientName(guid) {
    const gen = state.generation;
    try {
      const p = await json(`${API}/patients/${encodeURIComponent(guid)}`);
      if (gen !== state.generation) return;
      const name = `${p.family}, ${p.given}`;
      state.names.set(guid, name);
      $('patient-title').textContent = name;
      document.title = `ferry · ${name}`;
    } catch (_) { /* no record: the images' name or the guid stays */ }
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

  const TABS = [['images', 'tab-images', 'panel-images'], ['docs', 'tab-docs', 'panel-docs'], ['log', 'tab-log', 'panel-log']];
  const HASH_OF_TAB = { images: '', docs: '/documents', log: '/log' };
  function selectTab(name, focus) {
    for (const [n, tab, panel] of TABS) {
      const on = n === name;
      $(tab).setAttribute('aria-selected', String(on));
      $(tab).tabIndex = on ? 0 : -1;
      $(panel).hidden = !on;
      if (on && focus) $(tab).focus();
    }
    if (name === 'docs' && state.patient && !state.patient.docsLoaded) {
      state.patient.docsLoaded = true;
      loadDocs(docsUrl(null));
    }
    if (name === 'log' && state.patient && !state.patient.logLoaded) {
      state.patient.logLoaded = true;
      loadLog(`${API}/patients/${encodeURIComponent(state.patient.guid)}/logs`);
    }
  }
  function tabTo(name) {
    if (!state.patient) return;
    const target = `#/patient/${encodeURIComponent(state.patient.guid)}${HASH_OF_TAB[name]}`;
    if (location.hash !== target) history.replaceState(null, '', target);
    selectTab(name, true);
  }
  $('tab-images').addEventListener('click', () => tabTo('images'));
  $('tab-docs').addEventListener('click', () => tabTo('docs'));
  $('tab-log').addEventListener('click', () => tabTo('log'));
  document.querySelector('[role=tablist]').addEventListener('keydown', (ev) => {
    const tabs = TABS.filter(([, tab]) => !$(tab).hidden);
    const current = tabs.findIndex(([, tab]) => $(tab).getAttribute('aria-selected') === 'true');
    let next = null;
    if (ev.key === 'ArrowRight') next = (current + 1) % tabs.length;
    else if (ev.key === 'ArrowLeft') next = (current + tabs.length - 1) % tabs.length;
    else if (ev.key === 'Home') next = 0;
    else if (ev.key === 'End') next = tabs.length - 1;
    if (next !== null) {
      ev.preventDefault();
      tabTo(tabs[next][0]);
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

  // ------------------------------------------------------------ documents

  const docsUrl = (cursor) => `${API}/patients/${encodeURIComponent(state.patient.guid)}/documents${cursor ? `?cursor=${encodeURIComponent(cursor)}` : ''}`;
  const TYPE_NAMES = {
    'application/pdf': 'PDF', 'image/jpeg': 'JPEG', 'image/png': 'PNG', 'image/tiff': 'TIFF',
    'image/gif': 'GIF', 'application/dicom': 'DICOM', 'text/plain': 'Text',
  };
  const docKind = (d) => (d.type && (d.type.display || d.type.code)) || TYPE_NAMES[d.contentType] || d.contentType;
  const byWhom = (sub) => (sub === me().sub ? 'you' : sub);

  async function loadDocs(url) {
    const gen = state.generation;
    const p = state.patient;
    const msg = $('docs-message');
    say('Loading documents…');
    $('docs-more').disabled = true;
    try {
      const page = await json(url);
      if (gen !== state.generation) return;
      const body = $('docs-body');
      for (const d of page.documents) {
        p.docs.set(d.id, d);
        body.append(docRow(d));
      }
      const any = body.children.length > 0;
      $('docs-table').hidden = !any;
      msg.hidden = any;
      msg.textContent = any ? '' : 'No documents for this patient yet.';
      p.docsNext = page.nextCursor || null;
      $('docs-more').hidden = !p.docsNext;
      if (page.synced && page.synced.length) {
        const sb = $('synced-body');
        sb.replaceChildren();
        for (const x of page.synced) {
          sb.append(el('tr', { class: BAD.has(x.state) ? 'bad' : '' },
            el('td', {}, el('code', { text: x.itemId })),
            el('td', { text: x.state }),
            el('td', {}, x.remoteId ? el('code', { text: x.remoteId }) : ''),
            el('td', { text: new Date(x.updatedAt).toLocaleString() })));
        }
        $('synced-section').hidden = false;
      }
      say(`${body.children.length} document${body.children.length === 1 ? '' : 's'}${p.docsNext ? ' so far' : ''}.`);
    } catch (e) {
      if (gen !== state.generation) return;
      p.docsLoaded = false;
      if (e instanceof ApiError && e.status === 403) {
        msg.textContent = `Documents are not available: ${e.message}`;
        msg.hidden = false;
        $('upload-form').hidden = true;
        $('request-form').hidden = true;
        say('');
        return;
      }
      fail(e, 'Could not load the documents');
    } finally {
      $('docs-more').disabled = false;
    }
  }
  $('docs-more').addEventListener('click', () => {
    if (state.patient && state.patient.docsNext) loadDocs(docsUrl(state.patient.docsNext));
  });

  function reloadDocs() {
    const p = state.patient;
    if (!p) return Promise.resolve();
    p.docs.clear();
    p.docsLoaded = true;
    $('docs-body').replaceChildren();
    return loadDocs(docsUrl(null));
  }

  function docRow(d) {
    const open = el('button', { type: 'button', class: 'link', text: d.title, 'aria-label': `Open ${d.title}` });
    open.addEventListener('click', () => openDocument(d, open));
    const actions = el('td', { class: 'actions' });
    if (mayChange(d)) {
      const share = el('button', { type: 'button', class: 'quiet', text: 'Share', 'aria-label': `Share ${d.title}` });
      share.addEventListener('click', () => openShare(d, share));
      const del = el('button', { type: 'button', class: 'quiet danger', text: 'Delete', 'aria-label': `Delete ${d.title}` });
      del.addEventListener('click', () => deleteDocument(d, del));
      actions.append(share, del);
    }
    const tr = el('tr', { 'data-id': d.id },
      el('td', {}, open, d.description ? el('span', { class: 'sub', text: d.description }) : null),
      el('td', { text: formatDate(d.date) || formatDate((d.createdAt || '').slice(0, 10)) }),
      el('td', { text: docKind(d) }),
      el('td', { text: formatBytes(d.size) }),
      el('td', { text: byWhom(d.uploadedBy) }),
      actions);
    return tr;
  }

  async function deleteDocument(d, button) {
    if (!window.confirm(`Delete “${d.title}”? It is kept in the records as deleted, and no longer shown or shared.`)) return;
    button.disabled = true;
    try {
      await api(`${API}/documents/${encodeURIComponent(d.id)}`, { method: 'DELETE' });
      say(`Deleted “${d.title}”.`);
      await reloadDocs();
    } catch (e) {
      fail(e, 'Delete failed');
    } finally {
      button.disabled = false;
    }
  }

  $('upload-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const p = state.patient;
    if (!p) return;
    const status = $('upload-status');
    const file = $('upload-file').files[0];
    if (!file) {
      status.textContent = 'Choose a file first.';
      $('upload-file').focus();
      return;
    }
    const meta = {};
    const t = $('upload-doc-title').value.trim();
    if (t) meta.title = t;
    const desc = $('upload-description').value.trim();
    if (desc) meta.description = desc;
    const date = $('upload-date').value;
    if (date) meta.date = date;
    const form = new FormData();
    form.append('metadata', new Blob([JSON.stringify(meta)], { type: 'application/json' }));
    form.append('file', file, file.name);
    const button = ev.submitter || $('upload-form').querySelector('button');
    button.disabled = true;
    status.textContent = `Uploading ${file.name} (${formatBytes(file.size)})…`;
    try {
      const res = await api(`${API}/patients/${encodeURIComponent(p.guid)}/documents`, { method: 'POST', body: form });
      const doc = await res.json();
      $('upload-form').reset();
      status.textContent = `Added “${doc.title}” (${docKind(doc)}, ${formatBytes(doc.size)}).`;
      await reloadDocs();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return fail(e);
      status.textContent = `The upload was refused: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  });

  $('request-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const p = state.patient;
    if (!p) return;
    const status = $('request-status');
    const what = $('request-what').value.trim();
    if (!what) {
      status.textContent = 'Say which documents are needed.';
      $('request-what').focus();
      return;
    }
    const note = $('request-note').value.trim();
    const button = ev.submitter || $('request-form').querySelector('button');
    button.disabled = true;
    status.textContent = 'Sending the request…';
    try {
      const sent = await (await api(`${API}/patients/${encodeURIComponent(p.guid)}/request-documents`, {
        method: 'POST', json: note ? { what, note } : { what },
      })).json();
      $('request-form').reset();
      status.textContent = `Request sent (${sent.channel === 'email' ? 'e-mail to' : 'FHIR'} ${sent.sentTo}).`;
      // the request is in the sync log now
      p.logLoaded = false;
      $('log-body').replaceChildren();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return fail(e);
      status.textContent = `The request was not sent: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  });

  // ------------------------------------------------------------ document viewer

  // shown inline only as these types (the blob's type is ours, never the server's guess)
  const INLINE = new Set(['application/pdf', 'image/jpeg', 'image/png', 'image/gif', 'text/plain']);
  const TEXT_LIMIT = 1 << 20;
  let docReturn = null;
  let docOpen = null;
  let docBlobUrl = null;
  async function openDocument(d, from) {
    docReturn = from;
    docOpen = d;
    const dialog = $('doc-viewer');
    $('doc-title').textContent = d.title;
    const meta = $('doc-meta');
    meta.replaceChildren();
    for (const [k, v] of [
      ['File', d.fileName],
      ['Type', docKind(d)],
      ['Date', formatDate(d.date) || 'not given'],
      ['Size', formatBytes(d.size)],
      ['Added', `${new Date(d.createdAt).toLocaleString()} by ${byWhom(d.uploadedBy)}`],
      ['Description', d.description || ''],
    ]) if (v) meta.append(el('dt', { text: k }), el('dd', { text: v }));
    const frame = $('doc-frame');
    frame.replaceChildren(el('p', { id: 'doc-loading', class: 'help', text: 'Loading the document…' }));
    $('doc-status').textContent = '';
    if (!dialog.open) dialog.showModal();
    $('doc-download').focus();
    if (!INLINE.has(d.contentType)) {
      frame.replaceChildren(el('p', { class: 'help', text: `${docKind(d)} files are not shown here: download it to open it${d.contentType === 'application/dicom' ? ' in your DICOM viewer' : ''}.` }));
      return;
    }
    try {
      const got = await (await api(d.contentHref, { accept: d.contentType })).blob();
      if (docOpen !== d) return;
      if (d.contentType === 'text/plain') {
        const text = await got.slice(0, TEXT_LIMIT).text();
        frame.replaceChildren(el('pre', { class: 'doc-text', text: got.size > TEXT_LIMIT ? `${text}\n…` : text }));
        return;
      }
      const blob = new Blob([got], { type: d.contentType });
      docBlobUrl = URL.createObjectURL(blob);
      if (d.contentType === 'application/pdf') {
        frame.replaceChildren(el('iframe', { src: docBlobUrl, title: d.title, class: 'doc-pdf' }));
      } else {
        frame.replaceChildren(el('img', { src: docBlobUrl, alt: d.title }));
      }
    } catch (e) {
      if (docOpen !== d) return;
      if (e instanceof ApiError && e.status === 401) {
        dialog.close();
        return fail(e);
      }
      frame.replaceChildren(el('p', { class: 'error', text: `The document could not be loaded: ${e.message}` }));
    }
  }
  $('doc-close').addEventListener('click', () => $('doc-viewer').close());
  $('doc-viewer').addEventListener('close', () => {
    docOpen = null;
    if (docBlobUrl) URL.revokeObjectURL(docBlobUrl);
    docBlobUrl = null;
    $('doc-frame').replaceChildren();
    if (docReturn && document.contains(docReturn)) docReturn.focus();
  });
  $('doc-viewer').addEventListener('click', (ev) => {
    if (ev.target === $('doc-viewer')) $('doc-viewer').close();
  });
  $('doc-download').addEventListener('click', async () => {
    const d = docOpen;
    if (!d) return;
    const button = $('doc-download');
    const status = $('doc-status');
    button.disabled = true;
    status.textContent = `Downloading ${formatBytes(d.size)}…`;
    try {
      const blob = await (await api(d.contentHref, { accept: d.contentType })).blob();
      const url = URL.createObjectURL(new Blob([blob], { type: 'application/octet-stream' }));
      const a = el('a', { href: url, download: d.fileName || `${d.id}` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      status.textContent = `Downloaded ${d.fileName}.`;
    } catch (e) {
      status.textContent = `The download failed: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  });

  // ------------------------------------------------------------ sharing

  let shareDoc = null;
  let shareReturn = null;
  async function openShare(d, from) {
    shareDoc = d;
    shareReturn = from;
    $('share-title').textContent = `Share “${d.title}”`;
    $('share-form').reset();
    $('share-status').textContent = '';
    const dialog = $('share-dialog');
    if (!dialog.open) dialog.showModal();
    $('share-practitioner').focus();
    await loadShares(d);
  }
  async function loadShares(d) {
    const list = $('shares-list');
    list.replaceChildren();
    $('shares-empty').hidden = true;
    try {
      const shares = await json(`${API}/documents/${encodeURIComponent(d.id)}/shares`);
      if (shareDoc !== d) return;
      for (const s of shares) {
        const revoke = el('button', { type: 'button', class: 'quiet', text: 'Revoke', 'aria-label': `Revoke the share with ${s.practitioner}` });
        revoke.addEventListener('click', async () => {
          revoke.disabled = true;
          try {
            await api(`${API}/shares/${encodeURIComponent(s.id)}`, { method: 'DELETE' });
            $('share-status').textContent = `No longer shared with ${s.practitioner}.`;
            await loadShares(d);
          } catch (e) {
            $('share-status').textContent = `Revoking failed: ${e.message}`;
            revoke.disabled = false;
          }
        });
        const until = s.expiresAt ? ` until ${new Date(s.expiresAt).toLocaleDateString()}` : '';
        list.append(el('li', {}, el('span', { text: `${s.practitioner}${until}${s.note ? ` — ${s.note}` : ''}` }), revoke));
      }
      $('shares-empty').hidden = shares.length > 0;
    } catch (e) {
      $('share-status').textContent = `The shares could not be loaded: ${e.message}`;
    }
  }
  $('share-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const d = shareDoc;
    if (!d) return;
    const status = $('share-status');
    const practitioner = $('share-practitioner').value.trim();
    if (!practitioner) {
      status.textContent = 'Give the user id of the practitioner to share with.';
      $('share-practitioner').focus();
      return;
    }
    const ask = { practitioner };
    const until = $('share-expires').value;
    if (until) ask.expiresAt = `${until}T23:59:59Z`;
    const note = $('share-note').value.trim();
    if (note) ask.note = note;
    const button = ev.submitter || $('share-form').querySelector('button[type=submit]');
    button.disabled = true;
    try {
      await api(`${API}/documents/${encodeURIComponent(d.id)}/share`, { method: 'POST', json: ask });
      $('share-form').reset();
      status.textContent = `Shared with ${practitioner}.`;
      await loadShares(d);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        $('share-dialog').close();
        return fail(e);
      }
      status.textContent = `Not shared: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  });
  $('share-close').addEventListener('click', () => $('share-dialog').close());
  $('share-dialog').addEventListener('close', () => {
    shareDoc = null;
    if (shareReturn && document.contains(shareReturn)) shareReturn.focus();
  });

  function closeDialogs() {
    for (const id of ['viewer', 'doc-viewer', 'share-dialog']) if ($(id).open) $(id).close();
  }

  // ------------------------------------------------------------ shared with me

  async function showShared() {
    show('view-shared');
    document.title = 'ferry · Shared with me';
    focusHeading('shared-title');
    $('shared-body').replaceChildren();
    $('shared-table').hidden = true;
    $('shared-message').hidden = true;
    await loadShared(`${API}/shared-with-me`);
  }
  let sharedNext = null;
  async function loadShared(url) {
    const msg = $('shared-message');
    say('Loading what was shared with you…');
    try {
      const page = await json(url);
      const body = $('shared-body');
      for (const { share, document: d } of page.shared) {
        const open = el('button', { type: 'button', class: 'link', text: d.title, 'aria-label': `Open ${d.title}` });
        open.addEventListener('click', () => openDocument(d, open));
        body.append(el('tr', {},
          el('td', {}, open, el('span', { class: 'sub', text: `${docKind(d)}, ${formatBytes(d.size)}` })),
          el('td', {}, el('code', { text: share.patientGuid })),
          el('td', { text: byWhom(share.sharedBy) }),
          el('td', { text: share.note || '' }),
          el('td', { text: share.expiresAt ? new Date(share.expiresAt).toLocaleDateString() : '—' }),
          el('td', {})));
      }
      const any = body.children.length > 0;
      $('shared-table').hidden = !any;
      msg.hidden = any;
      msg.textContent = any ? '' : 'Nothing is shared with you at the moment.';
      sharedNext = page.nextCursor ? `${API}/shared-with-me?cursor=${encodeURIComponent(page.nextCursor)}` : null;
      $('shared-more').hidden = !sharedNext;
      say(`${body.children.length} shared document${body.children.length === 1 ? '' : 's'}.`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 403) {
        msg.textContent = `Not available: ${e.message}`;
        msg.hidden = false;
        say('');
        return;
      }
      fail(e, 'Could not load the shared documents');
    }
  }
  $('shared-more').addEventListener('click', () => { if (sharedNext) loadShared(sharedNext); });

  // ------------------------------------------------------------ users (admins)

  let usersNext = null;
  let editing = null; // the sub being edited, or null: adding
  async function showUsers() {
    show('view-users');
    document.title = 'ferry · Users';
    focusHeading('users-title');
    $('users-body').replaceChildren();
    $('users-table').hidden = true;
    $('users-message').hidden = true;
    $('user-form').hidden = !isAdmin();
    resetUserForm();
    await loadUsers(`${API}/users`);
  }
  async function loadUsers(url) {
    const msg = $('users-message');
    say('Loading users…');
    try {
      const page = await json(url);
      const body = $('users-body');
      for (const u of page.items) body.append(userRow(u));
      const any = body.children.length > 0;
      $('users-table').hidden = !any;
      msg.hidden = any;
      msg.textContent = any ? '' : 'No users yet: callers without an entry are staff.';
      usersNext = page.next || null;
      $('users-more').hidden = !usersNext;
      say(`${body.children.length} user${body.children.length === 1 ? '' : 's'}.`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 403) {
        msg.textContent = `Only admins manage users: ${e.message}`;
        msg.hidden = false;
        $('user-form').hidden = true;
        say('');
        return;
      }
      fail(e, 'Could not load the users');
    }
  }
  $('users-more').addEventListener('click', () => { if (usersNext) loadUsers(usersNext); });

  const TYPE_LABEL = { practitioner: 'Practitioner', patient: 'Patient', staff: 'Staff' };
  function userRow(u) {
    const edit = el('button', { type: 'button', class: 'quiet', text: 'Edit', 'aria-label': `Edit ${u.sub}` });
    edit.addEventListener('click', () => editUser(u));
    const del = el('button', { type: 'button', class: 'quiet danger', text: 'Delete', 'aria-label': `Delete ${u.sub}` });
    del.addEventListener('click', async () => {
      if (!window.confirm(`Delete the user ${u.sub}? Their tokens then count as staff.`)) return;
      del.disabled = true;
      try {
        await api(`${API}/users/${encodeURIComponent(u.sub)}`, { method: 'DELETE' });
        say(`Deleted ${u.sub}.`);
        await showUsers();
      } catch (e) {
        fail(e, 'Delete failed');
        del.disabled = false;
      }
    });
    return el('tr', { 'data-sub': u.sub },
      el('td', {}, el('code', { text: u.sub })),
      el('td', { text: u.name }),
      el('td', { text: u.email }),
      el('td', { text: TYPE_LABEL[u.type] || u.type }),
      el('td', {}, u.type === 'patient' && u.patientGuid ? el('code', { text: u.patientGuid }) : (u.profession || '')),
      el('td', { class: 'actions' }, edit, del));
  }
  function resetUserForm() {
    editing = null;
    $('user-form').reset();
    $('user-sub').readOnly = false;
    $('user-form-title').textContent = 'Add a user';
    $('user-save').textContent = 'Add user';
    $('user-cancel').hidden = true;
    $('user-status').textContent = '';
  }
  function editUser(u) {
    editing = u;
    $('user-sub').value = u.sub;
    $('user-sub').readOnly = true;
    $('user-name').value = u.name;
    $('user-email').value = u.email;
    $('user-type').value = u.type;
    $('user-profession').value = u.profession || '';
    $('user-patient').value = u.patientGuid || '';
    $('user-form-title').textContent = `Edit ${u.sub}`;
    $('user-save').textContent = 'Save';
    $('user-cancel').hidden = false;
    $('user-status').textContent = '';
    $('user-name').focus();
  }
  $('user-cancel').addEventListener('click', resetUserForm);
  $('user-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const status = $('user-status');
    const u = {
      sub: $('user-sub').value.trim(),
      name: $('user-name').value.trim(),
      email: $('user-email').value.trim(),
      type: $('user-type').value,
    };
    for (const [k, label] of [['sub', 'user id'], ['name', 'name'], ['email', 'e-mail']]) {
      if (!u[k]) {
        status.textContent = `Give the ${label}.`;
        $(`user-${k}`).focus();
        return;
      }
    }
    const profession = $('user-profession').value.trim();
    if (profession && u.type === 'practitioner') u.profession = profession;
    const guid = $('user-patient').value.trim();
    if (guid && u.type === 'patient') u.patientGuid = guid;
    if (editing && editing.externalIds) u.externalIds = editing.externalIds;
    const button = $('user-save');
    button.disabled = true;
    try {
      const path = editing ? `${API}/users/${encodeURIComponent(editing.sub)}` : `${API}/users`;
      await api(path, { method: editing ? 'PUT' : 'POST', json: u });
      const done = editing ? `Saved ${u.sub}.` : `Added ${u.sub}.`;
      await showUsers();
      $('user-status').textContent = done;
      say(done);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return fail(e);
      status.textContent = `Not saved: ${e.message}`;
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
