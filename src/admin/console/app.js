// Orchestron web console. Served by the admin listener under a strict CSP: no inline code,
// no external resources. Everything the API returns is sender- or operator-controlled and is
// put into the page as text only (createElement + textContent, never HTML parsing).
'use strict';
(function () {
  const TOKEN_KEY = 'orchestron.token';
  const REASONS = ['unroutable', 'rejected', 'max_attempts', 'expired', 'no_route'];
  const REFRESH_MS = 3000;
  // The overview's outbox figures come from a walk of the outbox: not at every refresh.
  const OUTBOX_EVERY = 15;
  const HISTORY = 60;
  const PAGE = 50;
  const COUNT_PAGE = 1000;
  const COUNT_MAX_PAGES = 10;
  const HEX_LIMIT = 65536;
  const SVGNS = 'http://www.w3.org/2000/svg';
  const REFUSED = 'The token was refused.';
  const GONE = 'Not in the outbox or the dead-letter queue: delivered to every destination ' +
    'and removed, or never accepted here';

  const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  const TYPE_RE = /^[A-Za-z0-9._:-]{1,128}$/;

  const $ = (id) => document.getElementById(id);
  let routeGen = 0; // bumped on every navigation: stale async renders check it and stop
  let timer = null;
  let flash = null; // { view, text }: a message to show after the next render of view
  let cancelConfirm = null;

  class AuthError extends Error {}
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // ---------------------------------------------------------------- DOM, as text only

  const ATTR_OK = /^(?:id|class|role|type|for|value|name|placeholder|autocomplete|spellcheck|colspan|scope|datetime|title|min|max|low|high|optimum|(?:data|aria)-[a-z-]+)$/;
  const SVG_ATTR_OK = /^(?:class|viewBox|width|height|points|x1|y1|x2|y2|preserveAspectRatio|focusable|role|aria-[a-z-]+)$/;

  function add(parent, kids) {
    for (const k of kids) {
      if (k == null || k === false) continue;
      if (Array.isArray(k)) add(parent, k);
      else if (k instanceof Node) parent.appendChild(k);
      else parent.appendChild(document.createTextNode(String(k)));
    }
    return parent;
  }

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'text') e.textContent = String(v);
      else if (k === 'hidden' || k === 'disabled') e[k] = true;
      else if (k === 'href') {
        // Only in-page routes, built by href() with every segment percent-encoded.
        if (typeof v !== 'string' || !v.startsWith('#/')) throw new Error('only in-page links');
        e.setAttribute('href', v);
      } else if (ATTR_OK.test(k)) e.setAttribute(k, String(v));
      else throw new Error('attribute not allowed: ' + k);
    }
    return add(e, kids);
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (!SVG_ATTR_OK.test(k)) throw new Error('attribute not allowed: ' + k);
      e.setAttribute(k, String(v));
    }
    return e;
  }

  const href = (...parts) => '#/' + parts.map((p) => encodeURIComponent(String(p))).join('/');
  function hrefQ(parts, query) {
    const q = query.toString();
    return href(...parts) + (q ? '?' + q : '');
  }
  const link = (to, text, attrs) => el('a', Object.assign({ href: to, text }, attrs));
  const alertBox = (text) => el('p', { class: 'error', role: 'alert', text });
  const muted = (text) => el('p', { class: 'muted', text });

  function section(id, title, ...kids) {
    return el('section', { id, class: 'view', 'aria-labelledby': id + '-title' },
      el('h1', { id: id + '-title', text: title }), kids);
  }

  // Replaces a node's children (arrays flattened, null skipped: never stringified).
  function fill(parent, ...kids) {
    parent.replaceChildren();
    return add(parent, kids);
  }

  function table(caption, head, rows, attrs) {
    return el('div', { class: 'table-wrap' },
      el('table', attrs,
        caption ? el('caption', { text: caption }) : null,
        el('thead', null, el('tr', null, head.map((c) => el('th', { scope: 'col', text: c })))),
        el('tbody', null, rows)));
  }

  // A row: cells are text, numbers (right-aligned) or nodes.
  function tr(cells, attrs) {
    return el('tr', attrs, cells.map((c) => (typeof c === 'number'
      ? el('td', { class: 'num', text: num(c) })
      : el('td', null, c == null ? '\u2014' : c))));
  }

  function kv(pairs) {
    const dl = el('dl', { class: 'kv' });
    for (const [k, v, attrs] of pairs) {
      if (v === undefined) continue;
      add(dl, [el('dt', { text: k }), el('dd', attrs, v == null || v === '' ? '\u2014' : v)]);
    }
    return dl;
  }

  // ---------------------------------------------------------------- formatting

  const nf0 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const nf2 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
  const isNum = (n) => typeof n === 'number' && Number.isFinite(n);
  const num = (n) => (isNum(n) ? nf0.format(n) : '\u2014');
  const rate = (n) => (isNum(n) ? nf2.format(n) + '/s' : '\u2014');
  const plural = (n, one, many) => num(n) + ' ' + (n === 1 ? one : many);

  function bytes(n) {
    if (!isNum(n)) return '\u2014';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? nf2.format(n) : nf0.format(n)) + ' ' + units[i];
  }

  function dur(s) {
    if (!isNum(s)) return '\u2014';
    s = Math.max(0, s);
    if (s < 10) return nf2.format(s) + ' s';
    if (s < 60) return Math.round(s) + ' s';
    const parts = [[86400, 'd'], [3600, 'h'], [60, 'min'], [1, 's']];
    const out = [];
    let rest = Math.round(s);
    for (const [size, unit] of parts) {
      if (rest >= size && out.length < 2) { out.push(Math.floor(rest / size) + ' ' + unit); rest %= size; } else if (out.length) break;
    }
    return out.join(' ');
  }

  function ago(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return '';
    const d = (Date.now() - t) / 1000;
    return d >= 0 ? dur(d) + ' ago' : 'in ' + dur(-d);
  }

  // An RFC 3339 time as the API gave it, with its age.
  function when(iso) {
    if (iso == null || iso === '') return '\u2014';
    const a = ago(String(iso));
    return el('span', { class: 'when' }, el('time', { datetime: String(iso), text: String(iso) }),
      a ? el('span', { class: 'muted', text: ' (' + a + ')' }) : null);
  }

  function errText(e) {
    if (e instanceof ApiError) {
      if (e.status === 0) return e.message;
      return 'HTTP ' + e.status + (e.code ? ' ' + e.code : '') + ': ' + e.message;
    }
    return String((e && e.message) || e);
  }

  // ---------------------------------------------------------------- API

  async function request(method, path, token) {
    try {
      return await fetch(path, {
        method,
        headers: { Authorization: 'Bearer ' + token, Accept: 'application/json, text/plain;q=0.9' },
        credentials: 'omit',
        cache: 'no-store',
        redirect: 'error',
      });
    } catch (_) {
      throw new ApiError(0, 'network', 'Could not reach the daemon (network error).');
    }
  }

  async function api(method, path, asText) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new AuthError('signed out');
    const res = await request(method, path, token);
    if (res.status === 401) {
      if (sessionStorage.getItem(TOKEN_KEY) === token) expire();
      throw new AuthError('refused');
    }
    const body = await res.text().catch(() => '');
    if (!res.ok) {
      let code = '';
      let message = '';
      try {
        const j = JSON.parse(body);
        code = j && j.error != null ? String(j.error) : '';
        message = j && j.message != null ? String(j.message) : '';
      } catch (_) { /* not JSON */ }
      throw new ApiError(res.status, code, message || res.statusText || 'request failed');
    }
    if (asText) return body;
    try { return JSON.parse(body); } catch (_) {
      throw new ApiError(res.status, 'not_json', 'The answer was not JSON.');
    }
  }

  function qs(obj) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(obj)) if (v != null && v !== '') q.set(k, String(v));
    return q;
  }

  // Runs an async render; errors become an alert in `box` (auth errors already signed out).
  async function guarded(gen, box, fn) {
    try { await fn(); } catch (e) {
      if (e instanceof AuthError || gen !== routeGen) return;
      fill(box, alertBox(errText(e)));
    }
  }

  // ---------------------------------------------------------------- sign-in

  function stopTimers() {
    if (timer) clearInterval(timer);
    timer = null;
  }

  function showSignIn(message) {
    routeGen += 1;
    stopTimers();
    if (cancelConfirm) cancelConfirm();
    $('view').replaceChildren();
    $('view').hidden = true;
    $('nav').hidden = true;
    $('signout').hidden = true;
    $('nav-fleet').hidden = true;
    $('signin-view').hidden = false;
    $('signin').disabled = false;
    $('signin-error').textContent = message || '';
    $('token').focus();
  }

  function expire() {
    sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(REFUSED);
  }

  function showConsole() {
    $('signin-view').hidden = true;
    $('signin-error').textContent = '';
    $('nav').hidden = false;
    $('signout').hidden = false;
    $('view').hidden = false;
    route();
  }

  async function signIn(token, stored) {
    if (!token) { $('signin-error').textContent = 'Paste the admin token first.'; return; }
    if (!/^[\x20-\x7e]+$/.test(token)) {
      $('signin-error').textContent = 'The token can only contain printable ASCII characters.';
      return;
    }
    $('signin').disabled = true;
    $('signin-error').textContent = '';
    try {
      const res = await request('GET', '/admin/config', token);
      if (res.status === 401) { sessionStorage.removeItem(TOKEN_KEY); showSignIn(REFUSED); return; }
      if (!res.ok) { showSignIn('The daemon answered HTTP ' + res.status + '.'); return; }
      sessionStorage.setItem(TOKEN_KEY, token);
      $('token').value = '';
      $('signin').disabled = false;
      showConsole();
      detectFleet();
    } catch (e) {
      showSignIn(errText(e));
    }
  }

  async function detectFleet() {
    try {
      await api('GET', '/admin/fleet');
      $('nav-fleet').hidden = false;
    } catch (e) {
      $('nav-fleet').hidden = e instanceof AuthError || (e instanceof ApiError && e.status === 404);
    }
  }

  // ---------------------------------------------------------------- routing

  function parseHash() {
    let raw = location.hash.replace(/^#\/?/, '');
    const qi = raw.indexOf('?');
    const query = new URLSearchParams(qi >= 0 ? raw.slice(qi + 1) : '');
    raw = qi >= 0 ? raw.slice(0, qi) : raw;
    const parts = raw.split('/').filter(Boolean).map((p) => {
      try { return decodeURIComponent(p); } catch (_) { return p; }
    });
    return { parts, query };
  }

  function go(to) {
    if (location.hash === to) route();
    else location.hash = to;
  }

  const VIEWS = {
    overview: renderOverview,
    dlq: (gen, arg, q) => (arg ? renderEntry(gen, arg) : renderDlq(gen, q)),
    outbox: renderOutbox,
    events: renderEvents,
    schemas: renderSchemas,
    fleet: renderFleet,
  };

  function route() {
    routeGen += 1;
    const gen = routeGen;
    stopTimers();
    if (cancelConfirm) cancelConfirm();
    if (!sessionStorage.getItem(TOKEN_KEY)) { showSignIn(''); return; }
    const { parts, query } = parseHash();
    const name = parts[0] || 'overview';
    for (const a of $('nav').querySelectorAll('a')) {
      if (a.id === 'nav-' + name) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    const view = $('view');
    view.replaceChildren();
    const render = Object.prototype.hasOwnProperty.call(VIEWS, name) ? VIEWS[name] : null;
    // An id or type from the address goes into a request path: only what the daemon would
    // accept (so "." or ".." can never turn /admin/dlq/<id>/replay into another endpoint).
    const arg = parts[1];
    const argOk = arg == null || name === 'events' ||
      (name === 'schemas' ? TYPE_RE.test(arg) && arg !== '.' && arg !== '..' : UUID_RE.test(arg));
    if (!render || !argOk) {
      view.append(section('not-found', 'Not found', alertBox('There is no such page.'),
        el('p', null, link('#/overview', 'Go to the overview'))));
      return;
    }
    render(gen, parts[1], query);
  }

  // ---------------------------------------------------------------- Prometheus text format

  function parseValue(s) {
    if (s === '+Inf' || s === 'Inf') return Infinity;
    if (s === '-Inf') return -Infinity;
    return s ? Number(s) : NaN; // NaN for "NaN", for garbage and for a missing value
  }

  // Lines `name{l1="v1",l2="v2"} value [timestamp]`; # lines skipped.
  function parseProm(text) {
    const out = [];
    for (const raw of text.split('\n')) {
      const line = raw.trim();
      if (!line || line[0] === '#') continue;
      const m = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
      if (!m) continue;
      const name = m[0];
      const labels = Object.create(null);
      let i = name.length;
      let ok = true;
      if (line[i] === '{') {
        i += 1;
        for (;;) {
          while (line[i] === ' ' || line[i] === ',') i += 1;
          if (i >= line.length) { ok = false; break; }
          if (line[i] === '}') { i += 1; break; }
          const lm = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(line.slice(i));
          if (!lm) { ok = false; break; }
          i += lm[0].length;
          while (line[i] === ' ') i += 1;
          if (line[i] !== '=') { ok = false; break; }
          i += 1;
          while (line[i] === ' ') i += 1;
          if (line[i] !== '"') { ok = false; break; }
          i += 1;
          let v = '';
          while (i < line.length && line[i] !== '"') {
            if (line[i] === '\\' && i + 1 < line.length) {
              const c = line[i + 1];
              v += c === 'n' ? '\n' : c;
              i += 2;
            } else { v += line[i]; i += 1; }
          }
          if (line[i] !== '"') { ok = false; break; }
          i += 1;
          labels[lm[0]] = v;
        }
      }
      if (!ok) continue;
      const value = parseValue(line.slice(i).trim().split(/\s+/)[0]);
      out.push({ name, labels, value });
    }
    return out;
  }

  const samplesOf = (s, name, pred) => s.filter((x) => x.name === name && (!pred || pred(x.labels)));
  function sum(s, name, pred) {
    const xs = samplesOf(s, name, pred);
    return xs.length ? xs.reduce((a, x) => a + (isNum(x.value) ? x.value : 0), 0) : null;
  }
  function group(s, name, label, pred) {
    const m = new Map();
    for (const x of samplesOf(s, name, pred)) {
      const k = x.labels[label] || '';
      m.set(k, (m.get(k) || 0) + (isNum(x.value) ? x.value : 0));
    }
    return m;
  }
  function first(s, name) {
    const xs = samplesOf(s, name);
    return xs.length ? xs[0].value : null;
  }

  // ---------------------------------------------------------------- sparkline

  function spark(values, label) {
    const w = 120;
    const h = 28;
    const s = svg('svg', { viewBox: '0 0 ' + w + ' ' + h, width: w, height: h, class: 'spark', role: 'img', 'aria-label': label, focusable: 'false' });
    s.appendChild(svg('line', { x1: 0, y1: h - 1, x2: w, y2: h - 1, class: 'spark-base' }));
    const vals = values.filter(isNum);
    if (vals.length >= 2) {
      const max = Math.max(...vals) || 1;
      const off = HISTORY - vals.length;
      const pts = vals.map((v, i) => ((w * (i + off)) / (HISTORY - 1)).toFixed(1) + ',' +
        (h - 2 - (v / max) * (h - 4)).toFixed(1)).join(' ');
      s.appendChild(svg('polyline', { points: pts, class: 'spark-line' }));
    }
    return s;
  }

  // ---------------------------------------------------------------- overview

  function renderOverview(gen) {
    const status = el('p', { class: 'muted', id: 'overview-updated', text: 'Loading\u2026' });
    const body = el('div', { id: 'overview-body' });
    $('view').append(section('overview', 'Overview', status, body));
    const ov = { prev: null, hist: new Map(), busy: false };
    const tick = async () => {
      if (ov.busy || gen !== routeGen) return;
      ov.busy = true;
      try {
        await pollOverview(gen, ov, status, body);
      } catch (e) {
        if (!(e instanceof AuthError) && gen === routeGen) fill(body, alertBox(errText(e)));
      } finally { ov.busy = false; }
    };
    tick();
    timer = setInterval(tick, REFRESH_MS);
  }

  function pushHist(ov, key, v) {
    let a = ov.hist.get(key);
    if (!a) { a = []; ov.hist.set(key, a); }
    a.push(v);
    if (a.length > HISTORY) a.shift();
    return a;
  }

  function rates(ov, kind, cur, dt) {
    const prev = ov.prev ? ov.prev[kind] : null;
    const out = new Map();
    for (const [k, v] of cur) {
      let r = null;
      if (prev && dt > 0) {
        const p = prev.has(k) ? prev.get(k) : 0;
        r = (v >= p ? v - p : v) / dt; // a drop is a counter reset
      }
      out.set(k, { total: v, rate: r, hist: r == null ? [] : pushHist(ov, kind + '\u0000' + k, r) });
    }
    return out;
  }

  async function pollOverview(gen, ov, status, body) {
    // GET /admin/outbox walks the outbox: read it every OUTBOX_EVERY s, not at each refresh.
    const asked = performance.now() / 1000;
    const outboxDue = !ov.outbox || asked - ov.outbox.at >= OUTBOX_EVERY;
    const res = await Promise.allSettled([
      api('GET', '/admin/metrics', true),
      outboxDue ? api('GET', '/admin/outbox') : Promise.resolve(ov.outbox.value),
      api('GET', '/admin/config'),
    ]);
    if (outboxDue && res[1].status === 'fulfilled') ov.outbox = { value: res[1].value, at: asked };
    if (gen !== routeGen || res.some((r) => r.status === 'rejected' && r.reason instanceof AuthError)) return;
    const [m, o, c] = res.map((r) => (r.status === 'fulfilled' ? r.value : null));
    const alerts = [];
    const why = (what, r) => {
      if (r.status !== 'rejected') return;
      const e = r.reason;
      alerts.push(what + ': ' + (e instanceof ApiError && (e.status === 404 || e.status === 405) && what === 'Metrics'
        ? 'GET /admin/metrics is not available on this daemon.' : errText(e)));
    };
    why('Metrics', res[0]);
    why('Outbox', res[1]);
    why('Configuration', res[2]);

    const now = performance.now() / 1000;
    let s = null;
    let cur = null;
    if (m != null) {
      s = parseProm(m);
      cur = {
        t: now,
        acc: group(s, 'orchestron_ingest_accepted_total', 'source'),
        ref: group(s, 'orchestron_ingest_rejected_total', 'source'),
        pub: group(s, 'orchestron_relay_publish_total', 'destination', (l) => l.result === 'ok'),
        fail: group(s, 'orchestron_relay_publish_total', 'destination', (l) => l.result !== 'ok'),
      };
    }
    const dt = cur && ov.prev ? cur.t - ov.prev.t : 0;
    const r = cur ? {
      acc: rates(ov, 'acc', cur.acc, dt), ref: rates(ov, 'ref', cur.ref, dt),
      pub: rates(ov, 'pub', cur.pub, dt), fail: rates(ov, 'fail', cur.fail, dt),
    } : null;
    if (cur) ov.prev = cur;

    const outboxAge = ov.outbox ? Math.round(now - ov.outbox.at) : null;
    status.textContent = 'Updated ' + new Date().toLocaleTimeString() + ' \u00B7 refreshes every 3 s' +
      (outboxAge ? ' \u00B7 outbox figures ' + outboxAge + ' s old (read every ' + OUTBOX_EVERY + ' s)' : '') +
      (r && dt === 0 ? ' \u00B7 rates appear after the second sample' : '');
    fill(body, alerts.map(alertBox), overviewContent(s, r, o, c));
  }

  function card(label, value, attrs) {
    return el('div', { class: 'card' }, el('div', { class: 'card-label', text: label }),
      el('div', Object.assign({ class: 'card-value' }, attrs), value));
  }

  function overviewContent(s, r, o, c) {
    const out = [];
    const accepted = s ? Math.round(sum(s, 'orchestron_ingest_accepted_total') || 0) : null;
    out.push(el('div', { class: 'cards' },
      card('Accepted (total)', accepted == null ? '\u2014' : String(accepted), { id: 'accepted-total' }),
      card('Pending in outbox', num(o ? o.pending : s && first(s, 'orchestron_outbox_pending_events')), { id: 'pending-total' }),
      card('Oldest pending', o ? (o.oldest_pending_age_seconds == null ? 'none' : dur(o.oldest_pending_age_seconds)) : '\u2014', { id: 'oldest-pending' }),
      card('Dead letters', num(o ? o.dlq_entries : s && first(s, 'orchestron_dlq_entries')), { id: 'dlq-total' }),
      card('Config version', c ? String(c.version) : '\u2014', { id: 'config-version' })));

    if (r) {
      const refusedBy = new Map();
      for (const x of samplesOf(s, 'orchestron_ingest_rejected_total')) {
        if (!(x.value > 0)) continue;
        const k = x.labels.source || '';
        refusedBy.set(k, (refusedBy.get(k) ? refusedBy.get(k) + ', ' : '') + (x.labels.reason || '?') + ' ' + num(x.value));
      }
      const sources = [...new Set([...r.acc.keys(), ...r.ref.keys()])].sort();
      const none = { total: 0, rate: null, hist: [] };
      out.push(el('h2', { text: 'Ingest by source' }), sources.length ? table(null,
        ['Source', 'Accepted', 'Accepted/s', 'Refused', 'Refused/s', 'Refused by reason', 'Accepted/s, refused/s (last 3 min)'],
        sources.map((src) => {
          const a = r.acc.get(src) || none;
          const f = r.ref.get(src) || none;
          return tr([src, a.total, rate(a.rate), f.total, rate(f.rate), refusedBy.get(src) || '\u2014',
            el('span', { class: 'sparks' }, spark(a.hist, 'accepted per second'), spark(f.hist, 'refused per second'))],
          { class: 'source-row', 'data-source': src });
        }), { id: 'ingest-table' }) : muted('No requests yet.'));

      const backlog = group(s, 'orchestron_outbox_destination_backlog', 'destination');
      const dests = [...new Set([...r.pub.keys(), ...r.fail.keys(), ...backlog.keys()])].sort();
      out.push(el('h2', { text: 'Publishing by destination' }), dests.length ? table(null,
        ['Destination', 'Published', 'Published/s', 'Failed/s', 'Backlog', 'Published/s (last 3 min)'],
        dests.map((d) => {
          const p = r.pub.get(d) || none;
          const f = r.fail.get(d) || none;
          return tr([d, p.total, rate(p.rate), rate(f.rate), backlog.has(d) ? backlog.get(d) : null,
            spark(p.hist, 'published per second')], { class: 'destination-row', 'data-destination': d });
        }), { id: 'publish-table' }) : muted('Nothing published yet.'));
    }

    if (o) {
      out.push(el('h2', { text: 'Outbox' }), outboxSummary(o), outboxTable(o));
    }

    if (s) {
      const up = samplesOf(s, 'orchestron_broker_up');
      if (up.length) {
        const nodes = new Map();
        for (const x of samplesOf(s, 'orchestron_broker_node_info')) if (x.value === 1) nodes.set(x.labels.broker, x.labels.node);
        const fails = new Map();
        for (const x of samplesOf(s, 'orchestron_broker_connect_failures_total')) {
          if (!(x.value > 0)) continue;
          const k = x.labels.broker;
          fails.set(k, (fails.get(k) ? fails.get(k) + ', ' : '') + (x.labels.reason || '?') + ' ' + num(x.value));
        }
        out.push(el('h2', { text: 'Brokers' }), table(null, ['Broker', 'State', 'Node', 'Connect failures'],
          up.map((x) => tr([x.labels.broker || '',
            el('span', { class: x.value === 1 ? 'ok' : 'bad', text: x.value === 1 ? 'connected' : 'down' }),
            nodes.get(x.labels.broker) || '\u2014', fails.get(x.labels.broker) || '\u2014'],
          { class: 'broker-row', 'data-broker': x.labels.broker || '' })), { id: 'broker-table' }));
      }
    }

    const build = s ? samplesOf(s, 'orchestron_build_info')[0] : null;
    if (c || s) {
      const failures = s ? sum(s, 'orchestron_config_reload_failures_total') : null;
      out.push(el('h2', { text: 'Configuration' }), kv([
        ['Version', c ? String(c.version) : undefined],
        ['Loaded', c ? when(c.loaded_at) : undefined],
        ['Last reload', c ? when(c.last_reload_at) : undefined],
        ['Last reload error', c ? (c.last_error == null ? 'none' : el('span', { class: 'bad', text: String(c.last_error) })) : undefined, { id: 'config-error' }],
        ['Needs a restart', c && Array.isArray(c.needs_restart) && c.needs_restart.length ? c.needs_restart.map(String).join(', ') : undefined],
        ['Reload failures', failures == null ? undefined : num(failures)],
        ['Daemon version', build ? String(build.labels.version || '') : undefined],
      ]));
    }

    if (s) {
      const expiry = first(s, 'orchestron_tls_cert_expiry_timestamp_seconds');
      if (expiry != null) {
        const days = (expiry - Date.now() / 1000) / 86400;
        out.push(el('h2', { text: 'TLS certificate' }), kv([
          ['Days left', el('span', { id: 'tls-days', class: days < 14 ? 'bad' : 'ok', text: isNum(days) ? nf2.format(Math.floor(days * 10) / 10) : '\u2014' })],
          ['Expires', isNum(expiry) && Math.abs(expiry) < 8.64e12 ? when(new Date(expiry * 1000).toISOString()) : '\u2014'],
        ]));
      }
      const size = first(s, 'orchestron_store_bytes');
      const max = first(s, 'orchestron_store_max_bytes');
      if (size != null) {
        const meter = max > 0 ? el('meter', { id: 'store-meter', min: 0, max, value: size, high: max * 0.8, optimum: 0, text: bytes(size) + ' of ' + bytes(max) }) : null;
        out.push(el('h2', { text: 'Store' }), kv([
          ['Size', el('span', null, bytes(size) + (max > 0 ? ' of ' + bytes(max) + ' (' + nf2.format((100 * size) / max) + ' %)' : ''), meter ? ' ' : null, meter)],
          ['Maximum', max > 0 ? undefined : 'not exported by this daemon'],
          ['Writable before 503', bytes(first(s, 'orchestron_store_free_bytes'))],
          ['Disk free', bytes(first(s, 'orchestron_store_disk_free_bytes'))],
        ]));
      }
      const syncUp = first(s, 'orchestron_sync_up');
      if (syncUp != null) {
        out.push(el('h2', { text: 'Fleet sync' }), kv([
          ['Heartbeat', el('span', { class: syncUp === 1 ? 'ok' : 'bad', text: syncUp === 1 ? 'committing' : 'not committing' })],
          ['Lag', num(first(s, 'orchestron_sync_lag_events')) + ' changes, ' + dur(first(s, 'orchestron_sync_lag_seconds'))],
          ['Live peers', num(first(s, 'orchestron_fleet_live_peers'))],
        ]));
      }
    }
    return out;
  }

  // ---------------------------------------------------------------- outbox

  function outboxSummary(o) {
    return kv([
      ['Pending events', num(o.pending)],
      ['Not routed yet', num(o.unrouted)],
      ['Oldest pending', o.oldest_pending_age_seconds == null ? 'none' : dur(o.oldest_pending_age_seconds)],
      ['Dead-letter entries', num(o.dlq_entries)],
    ]);
  }

  function outboxTable(o) {
    const ds = Array.isArray(o.destinations) ? o.destinations : [];
    if (!ds.length) return muted('No destination has a backlog.');
    return table(null, ['Destination', 'Broker', 'Pending', 'Oldest pending', 'Retrying', 'Failed attempts'],
      ds.map((d) => tr([String(d.destination), String(d.broker), d.pending, dur(d.oldest_pending_age_seconds), d.retrying, d.failed_attempts],
        { class: 'outbox-row', 'data-destination': String(d.destination) })), { id: 'outbox-table' });
  }

  function renderOutbox(gen) {
    const body = el('div', { id: 'outbox-body' }, muted('Loading\u2026'));
    const refresh = el('button', { type: 'button', id: 'outbox-refresh', text: 'Refresh' });
    $('view').append(section('outbox', 'Outbox', el('div', { class: 'actions' }, refresh), body));
    const load = () => guarded(gen, body, async () => {
      const o = await api('GET', '/admin/outbox');
      if (gen !== routeGen) return;
      fill(body, outboxSummary(o), outboxTable(o));
    });
    refresh.addEventListener('click', load);
    load();
  }

  // ---------------------------------------------------------------- dead letters

  function filterFrom(q) {
    const reason = q.get('reason') || '';
    return {
      source: q.get('source') || '', type: q.get('type') || '',
      destination: q.get('destination') || '', reason: REASONS.includes(reason) ? reason : '',
    };
  }
  const isEmpty = (f) => !f.source && !f.type && !f.destination && !f.reason;
  function describe(f) {
    const parts = [];
    for (const k of ['source', 'type', 'destination', 'reason']) {
      if (f[k]) parts.push(k + (k === 'destination' ? ' contains \u201C' : ' = \u201C') + f[k] + '\u201D');
    }
    return parts.length ? parts.join(', ') : 'no filter';
  }

  function field(id, label, input) {
    return el('div', { class: 'field' }, el('label', { for: id, text: label }), input);
  }

  function renderDlq(gen, query) {
    const f = filterFrom(query);
    const cursor = /^\d+$/.test(query.get('cursor') || '') ? query.get('cursor') : '';
    const input = (id, v) => el('input', { id, type: 'text', value: v, autocomplete: 'off', spellcheck: 'false' });
    const reason = el('select', { id: 'f-reason' }, el('option', { value: '', text: 'any' }),
      REASONS.map((x) => el('option', { value: x, text: x })));
    reason.value = f.reason;
    const form = el('form', { id: 'dlq-filter', class: 'filters', 'aria-label': 'Filter dead letters' },
      field('f-source', 'Source', input('f-source', f.source)),
      field('f-type', 'Type', input('f-type', f.type)),
      field('f-destination', 'Destination contains', input('f-destination', f.destination)),
      field('f-reason', 'Reason', reason),
      el('div', { class: 'field' }, el('button', { type: 'submit', id: 'f-apply', text: 'Apply' })));
    const replayAll = el('button', { type: 'button', id: 'dlq-replay-all', text: 'Replay all matching' });
    const purge = el('button', { type: 'button', id: 'dlq-purge', class: 'danger', text: 'Purge matching' });
    const refresh = el('button', { type: 'button', id: 'dlq-refresh', text: 'Refresh' });
    const message = el('p', { id: 'dlq-message', role: 'status', class: 'status' });
    const error = el('div', { id: 'dlq-error' });
    const list = el('div', { id: 'dlq-list' }, muted('Loading\u2026'));
    if (flash && flash.view === 'dlq') { message.textContent = flash.text; flash = null; }
    $('view').append(section('dlq', 'Dead letters', form,
      el('p', { class: 'muted', id: 'dlq-filter-text', text: 'Showing: ' + describe(f) + (cursor ? ' (older page)' : '') }),
      el('div', { class: 'actions' }, replayAll, purge, refresh), message, error, list));

    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      go(hrefQ(['dlq'], qs({
        source: $('f-source').value.trim(), type: $('f-type').value.trim(),
        destination: $('f-destination').value.trim(), reason: $('f-reason').value,
      })));
    });
    refresh.addEventListener('click', () => go(hrefQ(['dlq'], qs(Object.assign({}, f, { cursor })))));
    replayAll.addEventListener('click', () => bulk(gen, 'replay', f, message, error));
    purge.addEventListener('click', () => bulk(gen, 'purge', f, message, error));

    guarded(gen, list, async () => {
      const page = await api('GET', '/admin/dlq?' + qs(Object.assign({}, f, { limit: PAGE, cursor })));
      if (gen !== routeGen) return;
      const entries = Array.isArray(page.entries) ? page.entries : [];
      const rows = entries.map((e) => {
        const id = String(e.event_id);
        const ds = Array.isArray(e.destinations) ? e.destinations : [];
        const attempts = ds.reduce((a, d) => Math.max(a, Number(d.attempts) || 0), 0);
        return tr([link(href('dlq', id), id, { class: 'mono' }), String(e.source), String(e.type),
          String(e.reason), attempts, when(e.dead_lettered_at),
          ds.map((d) => String(d.destination)).join(', ') || '\u2014'],
        { class: 'dlq-row', 'data-event-id': id });
      });
      const nav = el('div', { class: 'actions' });
      if (cursor) nav.append(el('a', { href: hrefQ(['dlq'], qs(f)), id: 'dlq-first', class: 'button', text: 'Newest page' }));
      if (page.next_cursor != null) {
        const next = el('button', { type: 'button', id: 'dlq-next', text: 'Next page' });
        next.addEventListener('click', () => go(hrefQ(['dlq'], qs(Object.assign({}, f, { cursor: page.next_cursor })))));
        nav.append(next);
      }
      fill(list, entries.length
        ? table(null, ['Event id', 'Source', 'Type', 'Reason', 'Attempts', 'Dead-lettered', 'Failed destinations'], rows, { id: 'dlq-table' })
        : muted(cursor ? 'No older entries.' : 'No dead-letter entries match.'), nav);
    });
  }

  async function countMatching(f) {
    let n = 0;
    let cursor = null;
    let pages = 0;
    do {
      const page = await api('GET', '/admin/dlq?' + qs(Object.assign({}, f, { limit: COUNT_PAGE, cursor })));
      n += Array.isArray(page.entries) ? page.entries.length : 0;
      cursor = page.next_cursor;
      pages += 1;
    } while (cursor != null && pages < COUNT_MAX_PAGES);
    return { n, more: cursor != null };
  }

  async function bulk(gen, kind, f, message, error) {
    const replay = kind === 'replay';
    const all = isEmpty(f);
    const c = openConfirm(replay ? 'Replay matching entries' : 'Purge matching entries',
      'Counting the matching entries\u2026', replay ? 'Replay' : 'Delete', !replay);
    countMatching(f).then(({ n, more }) => {
      const count = (more ? 'At least ' : '') + plural(n, 'entry', 'entries');
      if (replay) {
        c.ready(count + ' match (' + describe(f) + '). Replay ' + (n === 1 && !more ? 'it' : 'them') +
          '? Each goes back to the outbox for the destinations that had failed.');
      } else if (all) {
        c.ready('No filter is set: this deletes ALL dead-letter entries (' + count + '). This cannot be undone.');
      } else {
        c.ready(count + ' match (' + describe(f) + '). Delete ' + (n === 1 && !more ? 'it' : 'them') + '? This cannot be undone.');
      }
    }, (e) => {
      if (!(e instanceof AuthError)) c.ready('Could not count the matching entries (' + errText(e) + '). ' + (replay ? 'Replay' : 'Delete') + ' every entry matching ' + describe(f) + ' anyway?');
    });
    if (!(await c.result) || gen !== routeGen) return;
    error.replaceChildren();
    message.textContent = replay ? 'Replaying\u2026' : 'Deleting\u2026';
    try {
      const q = replay ? qs(f) : (all ? qs({ all: 'true' }) : qs(f));
      const path = (replay ? '/admin/dlq/replay' : '/admin/dlq') + (q.toString() ? '?' + q : '');
      const res = await api(replay ? 'POST' : 'DELETE', path);
      const n = Number(replay ? res.replayed : res.deleted) || 0;
      flash = { view: 'dlq', text: (replay ? 'Replayed ' : 'Deleted ') + plural(n, 'entry', 'entries') + '.' };
      if (gen === routeGen) go(hrefQ(['dlq'], qs(f)));
    } catch (e) {
      if (e instanceof AuthError || gen !== routeGen) return;
      message.textContent = '';
      fill(error, alertBox((replay ? 'Replay' : 'Purge') + ' failed: ' + errText(e)));
    }
  }

  // ---------------------------------------------------------------- confirmation dialog

  function openConfirm(title, text, yesLabel, danger) {
    if (cancelConfirm) cancelConfirm();
    const d = $('confirm-dialog');
    const yes = $('confirm-yes');
    const no = $('confirm-no');
    const opener = document.activeElement;
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    yes.textContent = yesLabel;
    yes.className = danger ? 'danger' : '';
    yes.disabled = true;
    let resolve;
    const result = new Promise((r) => { resolve = r; });
    const onYes = () => finish(true);
    const onNo = () => finish(false);
    const onCancel = (ev) => { ev.preventDefault(); finish(false); };
    function finish(v) {
      yes.removeEventListener('click', onYes);
      no.removeEventListener('click', onNo);
      d.removeEventListener('cancel', onCancel);
      cancelConfirm = null;
      if (typeof d.close === 'function' && d.open) d.close(); else d.open = false;
      if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
      resolve(v);
    }
    yes.addEventListener('click', onYes);
    no.addEventListener('click', onNo);
    d.addEventListener('cancel', onCancel);
    // This dialog's own cancel: a count that finishes after this dialog closed (and maybe
    // after another one opened) must not fill in or enable the newer one.
    const mine = () => finish(false);
    cancelConfirm = mine;
    if (typeof d.showModal === 'function') d.showModal(); else d.open = true;
    no.focus();
    return {
      result,
      ready(t) {
        if (cancelConfirm !== mine || !d.open) return;
        $('confirm-text').textContent = t;
        yes.disabled = false;
      },
    };
  }

  // ---------------------------------------------------------------- one dead-letter entry

  function destinationsTable(ds, withNext) {
    if (!Array.isArray(ds) || !ds.length) return muted('No destinations.');
    const head = ['Destination', 'Broker', 'State', 'Attempts', 'Last error', 'First attempt', 'Last attempt'];
    if (withNext) head.push('Next attempt');
    return table(null, head, ds.map((d) => {
      const state = d.status != null ? String(d.status) : 'dead (' + String(d.reason) + ')';
      const cells = [String(d.destination), String(d.broker),
        el('span', { class: state === 'done' ? 'ok' : state === 'pending' ? 'warn' : 'bad', text: state }),
        Number(d.attempts) || 0,
        d.last_error == null ? '\u2014' : el('span', { class: 'pre-wrap', text: String(d.last_error) }),
        when(d.first_attempt_at), when(d.last_attempt_at)];
      if (withNext) cells.push(when(d.next_attempt_at));
      return tr(cells, { class: 'destination-row', 'data-destination': String(d.destination) });
    }));
  }

  function lastError(ds) {
    let best = null;
    for (const d of Array.isArray(ds) ? ds : []) {
      if (d.last_error == null) continue;
      if (!best || String(d.last_attempt_at || '') > String(best.last_attempt_at || '')) best = d;
    }
    return best ? el('span', { class: 'pre-wrap', text: String(best.last_error) }) : 'none';
  }

  function headerPairs(h) {
    if (Array.isArray(h)) {
      return h.map((x) => (Array.isArray(x) ? [x[0], x[1]]
        : x && typeof x === 'object' ? [x.name, x.value] : [x, '']));
    }
    if (h && typeof h === 'object') {
      return Object.entries(h).flatMap(([k, v]) => (Array.isArray(v) ? v.map((x) => [k, x]) : [[k, v]]));
    }
    return null;
  }

  function hexdump(b) {
    const lines = [];
    const n = Math.min(b.length, HEX_LIMIT);
    for (let off = 0; off < n; off += 16) {
      let hex = '';
      let asc = '';
      for (let i = 0; i < 16; i += 1) {
        if (off + i < n) {
          const x = b[off + i];
          hex += x.toString(16).padStart(2, '0') + ' ';
          asc += x >= 0x20 && x < 0x7f ? String.fromCharCode(x) : '.';
        } else hex += '   ';
        if (i === 7) hex += ' ';
      }
      lines.push(off.toString(16).padStart(8, '0') + '  ' + hex + ' |' + asc + '|');
    }
    if (b.length > n) lines.push('\u2026 ' + num(b.length - n) + ' more bytes');
    return lines.join('\n');
  }

  // Indentation multiplies a deeply nested document's size (each line carries its depth in
  // spaces): only small documents are indented, and what is shown is cut at SHOW_MAX.
  const INDENT_MAX = 65536;
  const SHOW_MAX = 1048576;
  function indented(value) {
    const compact = JSON.stringify(value);
    if (typeof compact !== 'string') return String(compact);
    if (compact.length > INDENT_MAX) return compact;
    const wide = JSON.stringify(value, null, 2);
    return wide.length > SHOW_MAX ? compact : wide;
  }
  function capped(text) {
    return text.length > SHOW_MAX
      ? text.slice(0, SHOW_MAX) + '\n\u2026 ' + num(text.length - SHOW_MAX) + ' more characters'
      : text;
  }
  const pretty = (text) => {
    try { return indented(JSON.parse(text)); } catch (_) { return null; }
  };

  // The body: pretty JSON, else raw text, else (raw bytes that are not UTF-8) a hex dump.
  function bodyView(e) {
    let note = null;
    let text;
    if (typeof e.body_base64 === 'string') {
      let b = null;
      try { b = Uint8Array.from(atob(e.body_base64), (ch) => ch.charCodeAt(0)); } catch (_) { b = null; }
      if (!b) { text = e.body_base64; note = 'The body could not be decoded from base64; shown as given.'; } else {
        try {
          const t = new TextDecoder('utf-8', { fatal: true }).decode(b);
          text = pretty(t);
          if (text == null) { text = t; note = 'Not JSON: shown as text.'; }
        } catch (_) { text = hexdump(b); note = 'Not UTF-8: shown as a hex dump.'; }
      }
    } else if (!Object.prototype.hasOwnProperty.call(e, 'body')) {
      text = '';
      note = 'This daemon did not send the body.';
    } else if (typeof e.body === 'string') {
      text = pretty(e.body);
      if (text == null) { text = e.body; note = 'Not JSON: shown as text.'; }
      if (e.body.includes('\uFFFD')) note = 'The body holds bytes that are not UTF-8; the daemon sent them replaced by \uFFFD.';
    } else {
      text = indented(e.body);
    }
    return [note ? muted(note) : null, el('pre', { id: 'entry-body', class: 'code', text: capped(text) })];
  }

  function renderEntry(gen, id) {
    const body = el('div', { id: 'entry-detail' }, muted('Loading\u2026'));
    $('view').append(section('dlq-entry', 'Dead-letter entry', el('p', null, link('#/dlq', '\u2190 Dead letters')), body));
    guarded(gen, body, async () => {
      const [er, lr] = await Promise.allSettled([
        api('GET', '/admin/dlq/' + encodeURIComponent(id)),
        api('GET', '/admin/events/' + encodeURIComponent(id)),
      ]);
      if (gen !== routeGen) return;
      if (er.status === 'rejected') {
        const e = er.reason;
        if (e instanceof AuthError) return;
        fill(body, alertBox(e instanceof ApiError && e.status === 404
          ? 'No dead-letter entry with this id: replayed, deleted, or removed by retention.' : errText(e)),
        el('p', null, link(href('events', id), 'Look the event up')));
        return;
      }
      const e = er.value;
      const lookup = lr.status === 'fulfilled' ? lr.value : null;
      const ds = Array.isArray(e.destinations) ? e.destinations : [];
      const trace = e.trace_id != null ? e.trace_id : e.traceparent;
      const replay = el('button', { type: 'button', id: 'entry-replay', text: 'Replay' });
      const del = el('button', { type: 'button', id: 'entry-delete', class: 'danger', text: 'Delete' });
      const message = el('p', { id: 'entry-message', role: 'status', class: 'status' });
      const error = el('div', { id: 'entry-error' });
      const headers = headerPairs(e.headers);
      const parts = [
        kv([
          ['Event id', el('span', { class: 'mono', id: 'entry-id', text: String(e.event_id) })],
          ['Source', String(e.source)],
          ['Type', el('span', { id: 'entry-type', text: String(e.type) })],
          ['Reason', el('span', { id: 'entry-reason', text: String(e.reason) })],
          ['Last error', lastError(ds)],
          ['Attempts', num(ds.reduce((a, d) => a + (Number(d.attempts) || 0), 0))],
          ['Received', when(e.received_at)],
          ['Dead-lettered', when(e.dead_lettered_at)],
          ['Body size', bytes(Number(e.body_bytes))],
          ['Instance', e.instance_id == null ? undefined : String(e.instance_id)],
          ['Trace id', trace == null ? undefined : el('span', { class: 'mono', id: 'entry-trace', text: String(trace) })],
        ]),
        el('div', { class: 'actions' }, replay, del), message, error,
        el('h2', { text: 'Failed destinations' }), destinationsTable(ds, false),
      ];
      if (lookup && lookup.pending && Array.isArray(lookup.pending.destinations) && lookup.pending.destinations.length) {
        parts.push(el('h2', { text: 'Still in the outbox' }), destinationsTable(lookup.pending.destinations, true));
      }
      parts.push(el('h2', { text: 'Kept headers' }), headers == null
        ? muted('This daemon does not send the kept headers.')
        : headers.length ? table(null, ['Name', 'Value'], headers.map(([k, v]) => tr([String(k), el('span', { class: 'pre-wrap', text: String(v) })], { class: 'header-row' })), { id: 'entry-headers' })
          : muted('None kept.'));
      parts.push(el('h2', { text: 'Body' }), bodyView(e));
      fill(body, parts);

      const done = (text) => {
        replay.disabled = true;
        del.disabled = true;
        message.textContent = text;
        error.replaceChildren();
      };
      replay.addEventListener('click', async () => {
        replay.disabled = true;
        try {
          await api('POST', '/admin/dlq/' + encodeURIComponent(id) + '/replay');
          if (gen !== routeGen) return;
          done('Replayed');
          message.after(el('p', null, link(href('events', id), 'See where it is now')));
        } catch (x) {
          replay.disabled = false;
          if (!(x instanceof AuthError) && gen === routeGen) fill(error, alertBox('Replay failed: ' + errText(x)));
        }
      });
      del.addEventListener('click', async () => {
        const c = openConfirm('Delete this entry', '', 'Delete', true);
        c.ready('Delete the dead-letter entry ' + String(e.event_id) + ' (' + String(e.type) + ') permanently? This cannot be undone.');
        if (!(await c.result) || gen !== routeGen) return;
        try {
          await api('DELETE', '/admin/dlq/' + encodeURIComponent(id));
          if (gen === routeGen) done('Deleted');
        } catch (x) {
          if (!(x instanceof AuthError) && gen === routeGen) fill(error, alertBox('Delete failed: ' + errText(x)));
        }
      });
    });
  }

  // ---------------------------------------------------------------- event lookup

  function renderEvents(gen, id) {
    const input = el('input', { id: 'event-id', type: 'text', value: id || '', placeholder: '0190\u2026', autocomplete: 'off', spellcheck: 'false' });
    const form = el('form', { id: 'event-form', class: 'filters', 'aria-label': 'Look an event up' },
      field('event-id', 'Event id', input),
      el('div', { class: 'field' }, el('button', { type: 'submit', id: 'event-find', text: 'Find' })));
    const result = el('div', { id: 'event-result' });
    $('view').append(section('events', 'Event lookup', form, result));
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const v = input.value.trim();
      if (!v) { fill(result, alertBox('Enter an event id.')); return; }
      go(href('events', v));
    });
    if (!id) return;
    if (!UUID_RE.test(id)) { fill(result, alertBox('Not an event id: event ids are UUIDs.')); return; }
    fill(result, muted('Looking it up\u2026'));
    guarded(gen, result, async () => {
      let ev;
      try {
        ev = await api('GET', '/admin/events/' + encodeURIComponent(id));
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) {
          if (gen === routeGen) fill(result, el('p', { id: 'event-gone', class: 'status-box', text: GONE }));
          return;
        }
        throw e;
      }
      if (gen !== routeGen) return;
      const p = ev.pending;
      const d = ev.dead_lettered;
      const all = [].concat(p && Array.isArray(p.destinations) ? p.destinations : [],
        d && Array.isArray(d.destinations) ? d.destinations : []);
      const attempts = all.reduce((a, x) => a + (Number(x.attempts) || 0), 0);
      const trace = ev.trace_id != null ? ev.trace_id : (d && d.trace_id != null ? d.trace_id : null);
      const info = p || d || {};
      const out = [
        el('p', { id: 'event-status', class: 'status-box', 'data-status': String(ev.status) },
          ev.status === 'pending' ? 'Pending in the outbox' + (p && p.destinations && p.destinations.length
            ? ' for ' + p.destinations.filter((x) => x.status === 'pending').map((x) => String(x.destination)).join(', ') : '') + '.'
            : 'Dead-lettered.'),
        kv([
          ['Event id', el('span', { class: 'mono', text: String(ev.event_id) })],
          ['Source', info.source == null ? undefined : String(info.source)],
          ['Type', info.type == null ? undefined : String(info.type)],
          ['Received', info.received_at === undefined ? undefined : when(info.received_at)],
          ['Body size', info.body_bytes == null ? undefined : bytes(Number(info.body_bytes))],
          ['Attempts so far', num(attempts)],
          ['Trace id', trace == null ? undefined : el('span', { class: 'mono', id: 'event-trace', text: String(trace) })],
        ]),
      ];
      if (p && p.held_for_key) out.push(muted('Held: accepted while the fleet database could not rule on its idempotency key; not published until it does.'));
      if (p && p.routed === false) out.push(muted('Not routed yet: its destinations are not known yet.'));
      if (p) out.push(el('h2', { text: 'Outbox destinations' }), destinationsTable(p.destinations, true));
      if (d) {
        out.push(el('h2', { text: 'Dead-lettered' }),
          el('p', null, (p ? 'Some destinations were given up on: ' : ''), link(href('dlq', String(ev.event_id)), 'Open its dead-letter entry', { id: 'event-dlq-link' })),
          destinationsTable(d.destinations, false));
      }
      fill(result, out);
    });
  }

  // ---------------------------------------------------------------- schemas

  function renderSchemas(gen, type) {
    const list = el('div', { id: 'schema-list' }, muted('Loading\u2026'));
    const view = type ? el('div', { id: 'schema-view' }, el('h2', { text: type }), muted('Loading\u2026')) : null;
    $('view').append(section('schemas', 'Schemas', list, view));
    guarded(gen, list, async () => {
      const r = await api('GET', '/admin/schemas');
      if (gen !== routeGen) return;
      const types = Array.isArray(r.schemas) ? r.schemas.map(String) : [];
      fill(list,
        kv([['Directory', r.dir == null ? 'not set (schemas cannot be registered through the API)' : String(r.dir)]]),
        types.length ? el('ul', { class: 'schema-types' }, types.map((t) => el('li', { class: 'schema-item', 'data-type': t },
          link(href('schemas', t), t, t === type ? { 'aria-current': 'page' } : null))))
          : muted('No event type has a schema.'));
    });
    if (!view) return;
    guarded(gen, view, async () => {
      let text;
      try {
        const s = await api('GET', '/admin/schemas/' + encodeURIComponent(type));
        text = capped(indented(s));
      } catch (e) {
        if (gen !== routeGen || e instanceof AuthError) return;
        // 405: a daemon with PUT only for this path; not JSON: one that answers otherwise.
        const older = e instanceof ApiError && (e.status === 405 || e.code === 'not_json');
        const missing = e instanceof ApiError && e.status === 404;
        fill(view, el('h2', { text: type }), older || missing
          ? el('p', { class: 'status-box', id: 'schema-unavailable', text: older
            ? 'Viewing needs a newer daemon.' : 'No schema for this event type in the running configuration.' })
          : alertBox(errText(e)));
        return;
      }
      if (gen !== routeGen) return;
      fill(view, el('h2', { text: type }), el('pre', { id: 'schema-body', class: 'code', text }));
    });
  }

  // ---------------------------------------------------------------- fleet

  function renderFleet(gen) {
    const body = el('div', { id: 'fleet-body' }, muted('Loading\u2026'));
    const refresh = el('button', { type: 'button', id: 'fleet-refresh', text: 'Refresh' });
    $('view').append(section('fleet', 'Fleet', el('div', { class: 'actions' }, refresh), body));
    const load = () => guarded(gen, body, async () => {
      let f;
      try { f = await api('GET', '/admin/fleet'); } catch (e) {
        if (e instanceof ApiError && e.status === 404) {
          $('nav-fleet').hidden = true;
          if (gen === routeGen) fill(body, alertBox('Fleet sync is not configured on this daemon (no sync: section).'));
          return;
        }
        throw e;
      }
      if (gen !== routeGen) return;
      $('nav-fleet').hidden = false;
      const s = f.sync || {};
      const kh = s.key_holds;
      const members = Array.isArray(f.instances) ? f.instances : [];
      fill(body,
        el('h2', { text: 'This instance' }),
        kv([
          ['Instance id', el('span', { class: 'mono', text: String(f.instance_id) })],
          ['Connected', el('span', { class: s.connected ? 'ok' : 'bad', text: s.connected ? 'yes' : 'no' })],
          ['Epoch', num(Number(s.epoch))],
          ['Lease lapsed', s.lease_lapsed ? el('span', { class: 'bad', text: 'yes' }) : 'no'],
          ['Last heartbeat', s.last_heartbeat_age_seconds == null ? undefined : dur(Number(s.last_heartbeat_age_seconds)) + ' ago'],
          ['Sync lag', num(Number(s.lag_events)) + ' changes, ' + dur(Number(s.lag_seconds))],
          ['Key holds', kh ? num(Number(kh.waiting)) + ' waiting; since start ' + num(Number(kh.claimed)) + ' claimed, ' +
            num(Number(kh.duplicate)) + ' duplicate, ' + num(Number(kh.expired)) + ' expired' : undefined],
          ['Last error', s.error == null ? undefined : el('span', { class: 'bad', text: String(s.error) })],
        ]),
        el('h2', { text: 'Instances' }),
        members.length ? table(null, ['Instance id', 'Live', 'Lease age', 'Epoch', 'Pending', 'DLQ size', 'Sync lag', 'Version', 'Started'],
          members.map((m) => tr([
            el('span', { class: 'mono' }, String(m.instance_id), m.instance_id === f.instance_id ? el('span', { class: 'muted', text: ' (this one)' }) : null),
            el('span', { class: m.live ? 'ok' : 'bad', text: m.live ? 'live' : 'expired' }),
            dur(Number(m.lease_age_seconds)), Number(m.epoch), Number(m.pending_events), Number(m.dlq_entries),
            Number(m.sync_lag_events), String(m.version), when(m.started_at)],
          { class: 'fleet-row', 'data-instance-id': String(m.instance_id) })), { id: 'fleet-table' })
          : muted('No instance in the database yet.'));
    });
    refresh.addEventListener('click', load);
    load();
  }

  // ---------------------------------------------------------------- start

  function init() {
    $('signin').disabled = false; // disabled in the HTML until this script can handle it
    $('signin-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      signIn($('token').value.trim(), false);
    });
    $('signout').addEventListener('click', () => {
      sessionStorage.clear();
      showSignIn('');
    });
    window.addEventListener('hashchange', () => {
      if (sessionStorage.getItem(TOKEN_KEY) && $('signin-view').hidden) {
        route();
        $('view').focus({ preventScroll: true });
      }
    });
    const stored = sessionStorage.getItem(TOKEN_KEY);
    if (stored) signIn(stored, true);
    else showSignIn('');
  }

  init();
}());
