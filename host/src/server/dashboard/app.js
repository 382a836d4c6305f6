// The cjm dashboard: a page on the host's /v1 API and its event stream, nothing else.
// Written by hand, without a framework or a build step. The DOM is built from text nodes
// (h() below), never from markup, so nothing a capability returns can run here.
'use strict';

// ---------------------------------------------------------------- DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.setAttribute('class', v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const $ = (sel, root = document) => root.querySelector(sel);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Ids are UUIDv7: their first characters are a timestamp, shared by every id of a burst;
// the last ones tell them apart.
const short = (id) => (id ? String(id).slice(-8) : '');
const pretty = (v) => JSON.stringify(v, null, 2);
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
const RANK = { pending: 0, running: 1, completed: 2, failed: 2, cancelled: 2 };

function pill(state) {
  return h('span', { class: `pill s-${state}`, dataset: { state } }, String(state).replace('_', ' '));
}

function when(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  return isNaN(d) ? ts : d.toLocaleTimeString();
}

function duration(job) {
  if (!job.started_at) return '';
  const end = job.completed_at ? Date.parse(job.completed_at) : Date.now();
  const ms = end - Date.parse(job.started_at);
  if (!(ms >= 0)) return '';
  return ms < 1000 ? `${ms} ms` : ms < 120000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 60000)} min`;
}

function toast(message, bad) {
  const el = h('div', { class: bad ? 'bad' : '' }, message);
  $('#toast').append(el);
  setTimeout(() => el.remove(), bad ? 8000 : 3500);
}

// ---------------------------------------------------------------- the API

let token = sessionStorage.getItem('cjm-token');
let tokenAsked = null;

function authHeaders(extra) {
  const headers = Object.assign({}, extra);
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

// The API answered 401: ask for the token once, however many requests were refused.
function askToken() {
  if (tokenAsked) return tokenAsked;
  tokenAsked = new Promise((resolve) => {
    const dialog = $('#token-dialog');
    const form = $('#token-form');
    const input = $('#token-input');
    $('#token-error').textContent = token ? 'That token was refused.' : '';
    form.onsubmit = async (e) => {
      e.preventDefault();
      const given = input.value.trim();
      const r = await fetch('/v1/health', { headers: { Authorization: `Bearer ${given}` } });
      if (r.status === 401) {
        $('#token-error').textContent = 'That token was refused.';
        return;
      }
      token = given;
      sessionStorage.setItem('cjm-token', token);
      input.value = '';
      dialog.close();
      tokenAsked = null;
      resolve();
    };
    // Without the token nothing works: Esc does not dismiss the prompt.
    dialog.oncancel = (e) => e.preventDefault();
    if (!dialog.open) dialog.showModal();
  });
  return tokenAsked;
}

async function api(path, { method = 'GET', body } = {}) {
  for (;;) {
    const init = { method, headers: authHeaders(), cache: 'no-store' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    if (r.status === 401) {
      await askToken();
      continue;
    }
    const text = await r.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = { error: { kind: 'unreadable', message: text.slice(0, 200) } };
    }
    if (!r.ok) {
      const e = new Error((data && data.error && data.error.message) || (data && data.message) || r.statusText);
      e.status = r.status;
      e.body = data;
      throw e;
    }
    return data;
  }
}

// An action from a button: its error as a toast.
async function act(what, fn) {
  try {
    await fn();
  } catch (e) {
    toast(`${what}: ${e.message}`, true);
  }
}

// ---------------------------------------------------------------- Server-Sent Events

// Reads an event stream with fetch (EventSource cannot send the bearer token), calling
// onEvent({id, event, data}) per event, until the stream ends or `signal` aborts.
async function readStream(url, { lastId, signal, onOpen, onEvent }) {
  const headers = authHeaders({ Accept: 'text/event-stream' });
  if (lastId !== null && lastId !== undefined) headers['Last-Event-ID'] = String(lastId);
  const r = await fetch(url, { headers, signal, cache: 'no-store' });
  if (r.status === 401) {
    await askToken();
    return;
  }
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  if (onOpen) onOpen();
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { id: null, event: 'message', data: [] };
      for (const line of block.split('\n')) {
        if (!line || line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? '' : line.slice(colon + 1);
        if (val.startsWith(' ')) val = val.slice(1);
        if (field === 'id') event.id = val;
        else if (field === 'event') event.event = val;
        else if (field === 'data') event.data.push(val);
      }
      if (event.data.length) {
        event.data = event.data.join('\n');
        onEvent(event);
      }
    }
  }
}

// The journal, live: one stream for the whole page. Its cursor is the last journal seq
// seen; a reconnect (the server restarted, the network dropped) resumes after it, and a
// row seen twice is skipped by its seq, so no row is lost or doubled.
const live = {
  seq: null,
  listeners: new Set(),
  connects: 0,
  setState(state) {
    const el = $('#conn');
    el.dataset.state = state;
    el.textContent = state;
  },
  on(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  },
  async run() {
    let delay = 250;
    for (;;) {
      try {
        if (this.seq === null) {
          const q = await api('/v1/queue');
          this.seq = q.journal_seq;
        }
        await readStream('/v1/events', {
          lastId: this.seq,
          onOpen: () => {
            this.connects += 1;
            delay = 250;
            this.setState('live');
            $('#conn').dataset.connects = String(this.connects);
          },
          onEvent: (e) => {
            if (e.id !== null) {
              const seq = Number(e.id);
              if (seq <= this.seq) return;
              this.seq = seq;
            }
            let row;
            try {
              row = JSON.parse(e.data);
            } catch {
              return;
            }
            for (const fn of this.listeners) fn(row);
          },
        });
      } catch (err) {
        // Reconnected below.
      }
      this.setState('reconnecting');
      await sleep(delay);
      delay = Math.min(delay * 2, 4000);
    }
  },
};

// ---------------------------------------------------------------- the job store

const jobs = new Map();
const waits = new Map();
const refreshing = new Set();
let refreshTimer = null;

function mergeJob(job) {
  const old = jobs.get(job.id);
  // A stale answer never moves a job back (a terminal state wins over a running one).
  if (old && RANK[old.status] > RANK[job.status]) return;
  jobs.set(job.id, Object.assign(old || {}, job));
  changed();
}

// The jobs the page shows (the jobs table's rows, a job's own page): only those are read
// back from the API after an event; a burst of thousands of jobs costs no more requests
// than the rows on screen.
const shown = new Set();

function refreshJob(id) {
  refreshing.add(id);
  if (!refreshTimer) {
    refreshTimer = setTimeout(async () => {
      refreshTimer = null;
      const ids = [...refreshing].filter((i) => shown.has(i)).slice(0, 50);
      refreshing.forEach((i) => { if (!shown.has(i)) refreshing.delete(i); });
      ids.forEach((i) => refreshing.delete(i));
      await Promise.all(ids.map((i) => api(`/v1/jobs/${encodeURIComponent(i)}`).then(mergeJob, () => {})));
      if (refreshing.size) refreshJob([...refreshing][0]);
    }, 150);
  }
}

live.on((row) => {
  const id = row.job_id;
  if (!id) return;
  const p = row.payload || {};
  let job = jobs.get(id);
  if (row.event_type === 'job_submitted' || row.event_type === 'job_adopted') {
    const spec = p.spec || {};
    if (!job) {
      job = {
        id,
        instance_id: row.capability_instance_id || spec.instance_id,
        capability_name: row.capability_name,
        task_name: spec.task || null,
        method: spec.method || null,
        priority: spec.priority || 0,
        status: 'pending',
        submitted_at: row.ts,
        progress: 0,
        status_message: '',
        run_id: row.run_id,
        composition_id: row.composition_id,
      };
      jobs.set(id, job);
    }
  } else if (row.event_type === 'state_transition' && job) {
    if (RANK[p.to] >= RANK[job.status]) job.status = p.to;
    if (p.to === 'running' && !job.started_at) job.started_at = row.ts;
    if (TERMINAL.has(p.to) && !job.completed_at) job.completed_at = row.ts;
  } else if (row.event_type === 'progress_changed' && job) {
    job.progress = p.progress;
    job.status_message = p.message || '';
    if (job.status === 'pending') job.status = 'running';
  }
  if (row.event_type !== 'progress_changed' && row.event_type !== 'resource_snapshot') refreshJob(id);
  changed();
});

// ---------------------------------------------------------------- rendering

let scheduled = false;
let current = null; // { name, update, leave }

function changed() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    if (current && current.update) current.update();
  });
}

const pages = {
  overview: overviewPage,
  jobs: jobsPage,
  job: jobPage,
  compositions: compositionsPage,
  composition: compositionPage,
  capabilities: capabilitiesPage,
  capability: capabilityPage,
};

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  let name = parts[0] || 'overview';
  const arg = parts.slice(1).join('/');
  if (arg && name === 'jobs') name = 'job';
  else if (arg && name === 'compositions') name = 'composition';
  else if (arg && name === 'capabilities') name = 'capability';
  if (!pages[name]) name = 'overview';
  if (current && current.leave) current.leave();
  const main = $('#page');
  main.replaceChildren();
  main.dataset.page = name;
  const nav = { job: 'jobs', composition: 'compositions', capability: 'capabilities' }[name] || name;
  document.querySelectorAll('nav a').forEach((a) => a.classList.toggle('active', a.dataset.nav === nav));
  current = pages[name](main, arg) || {};
  if (current.update) current.update();
}

function every(ms, fn) {
  let stopped = false;
  (async () => {
    while (!stopped) {
      await fn().catch(() => {});
      await sleep(ms);
    }
  })();
  return () => {
    stopped = true;
  };
}

// ---------------------------------------------------------------- Overview

function sparkline(points, max) {
  const w = 120;
  const ht = 28;
  const top = Math.max(max || 0, ...points, 1e-9);
  const step = points.length > 1 ? w / (points.length - 1) : w;
  const coords = points.map((v, i) => `${(i * step).toFixed(1)},${(ht - 2 - (v / top) * (ht - 4)).toFixed(1)}`);
  return s('svg', { class: 'spark', viewBox: `0 0 ${w} ${ht}`, preserveAspectRatio: 'none' },
    s('polyline', { points: coords.join(' ') }));
}

const history = { workers: new Map(), completed: [], cpu: [], latest: null };

// Samples the host every two seconds from the start, whatever the page, so the charts have
// a history when the overview opens.
async function sample() {
  const [res, queue, caps] = await Promise.all([api('/v1/resources'), api('/v1/queue'), api('/v1/capabilities')]);
  const now = Date.now();
  history.completed.push([now, queue.stats.completed + queue.stats.failed + queue.stats.cancelled]);
  if (history.completed.length > 30) history.completed.shift();
  if (res.machine.system) history.cpu.push(res.machine.system.cpu_percent);
  if (history.cpu.length > 60) history.cpu.shift();
  for (const w of res.workers) {
    const hist = history.workers.get(w.instance_id) || { cpu: [], rss: [], vram: [] };
    hist.cpu.push(w.cpu_percent || 0);
    hist.rss.push(w.memory_rss_mb || 0);
    hist.vram.push(w.gpu_memory_mb || 0);
    for (const k of ['cpu', 'rss', 'vram']) if (hist[k].length > 60) hist[k].shift();
    history.workers.set(w.instance_id, hist);
  }
  history.latest = { res, queue, caps };
  changed();
}

function overviewPage(main) {
  const cards = h('div', { class: 'cards', id: 'overview-cards' });
  const tbody = h('tbody');
  main.append(
    h('h1', {}, 'Overview'),
    cards,
    h('h2', {}, 'Instances'),
    h('table', { id: 'instances-table' },
      h('thead', {}, h('tr', {},
        h('th', {}, 'Instance'), h('th', {}, 'Kind'), h('th', {}, 'State'), h('th', { class: 'num' }, 'Worker pid'),
        h('th', {}, 'CPU %'), h('th', {}, 'RSS MB'), h('th', {}, 'VRAM MB'))),
      tbody),
  );
  return {
    update() {
      if (!history.latest) return;
      const { res, queue, caps } = history.latest;
      const sys = res.machine.system;
      const gpu = res.machine.gpu;
      const c = history.completed;
      const rate = c.length > 1 ? (c[c.length - 1][1] - c[0][1]) / ((c[c.length - 1][0] - c[0][0]) / 1000) : 0;
      const card = (label, value, extra) => h('div', { class: 'card' },
        h('div', { class: 'label' }, label), h('div', { class: 'value' }, value), extra || '');
      const gpuText = gpu.status === 'available'
        ? gpu.devices.map((d) => `${Math.round(d.memory_used_mb)} / ${Math.round(d.memory_total_mb)} MB`).join(', ')
        : 'no GPU telemetry';
      cards.replaceChildren(
        card('CPU', sys ? `${sys.cpu_percent.toFixed(0)} %` : '?', sparkline(history.cpu, 100)),
        card('Memory', sys ? `${Math.round(sys.memory_used_mb)} / ${Math.round(sys.memory_total_mb)} MB` : '?'),
        card('GPU memory', gpuText, gpu.status === 'available' ? '' : h('div', { class: 'muted small' }, gpu.reason || '')),
        card('Queue', `${queue.stats.pending} waiting · ${queue.stats.running} running`,
          h('div', { class: 'muted' }, `${queue.lanes} lanes${queue.closed ? ' · stopping' : ''}${queue.wedged ? ' · journal wedged' : ''}`)),
        card('Throughput', `${rate.toFixed(1)} jobs/s`,
          h('div', { class: 'muted' }, `${queue.stats.completed} completed · ${queue.stats.failed} failed · ${queue.stats.cancelled} cancelled`)),
      );
      const state = new Map();
      for (const cap of caps.capabilities) for (const i of cap.instances) state.set(i.id, i);
      tbody.replaceChildren(...res.workers.map((w) => {
        const hist = history.workers.get(w.instance_id) || { cpu: [], rss: [], vram: [] };
        const inst = state.get(w.instance_id) || {};
        return h('tr', { dataset: { instance: w.instance_id } },
          h('td', {}, h('a', { href: `#/capabilities/${encodeURIComponent(w.instance_id)}` }, w.instance_id)),
          h('td', {}, w.kind),
          h('td', { title: inst.reason || '' }, pill(inst.state || 'idle')),
          h('td', { class: 'num' }, w.pid || '—'),
          h('td', {}, w.pid ? [sparkline(hist.cpu), ' ', (w.cpu_percent || 0).toFixed(0)] : '—'),
          h('td', {}, w.pid ? [sparkline(hist.rss), ' ', (w.memory_rss_mb || 0).toFixed(0)] : '—'),
          h('td', {}, w.gpu_memory_mb !== null && w.gpu_memory_mb !== undefined ? [sparkline(hist.vram), ' ', w.gpu_memory_mb.toFixed(0)] : '—'),
        );
      }));
      if (!res.workers.length) tbody.append(h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No instance is loaded.')));
    },
  };
}

// ---------------------------------------------------------------- Jobs

const filters = { status: '', capability: '', run_id: '' };

function jobMatches(j) {
  return (!filters.status || j.status === filters.status)
    && (!filters.capability || j.instance_id === filters.capability || j.capability_name === filters.capability)
    && (!filters.run_id || j.run_id === filters.run_id);
}

async function loadJobs() {
  const q = new URLSearchParams({ limit: '200' });
  for (const [k, v] of Object.entries(filters)) if (v && k !== 'capability') q.set(k, v);
  const page = await api(`/v1/jobs?${q}`);
  for (const j of page.jobs) {
    mergeJob(j);
    shown.add(j.id);
    if (!TERMINAL.has(j.status)) refreshJob(j.id);
  }
}

function cancelJob(id) {
  return act('cancel', async () => {
    await api(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
    toast(`cancelling ${short(id)}`);
    refreshJob(id);
  });
}

function reprioritise(job, delta) {
  return act('priority', async () => {
    const priority = (job.priority || 0) + delta;
    await api(`/v1/jobs/${encodeURIComponent(job.id)}/priority`, { method: 'POST', body: { priority } });
    job.priority = priority;
    refreshJob(job.id);
    changed();
  });
}

function progressCell(j) {
  const pct = Math.max(0, Math.min(1, j.progress || 0)) * 100;
  const bar = h('span', {});
  bar.style.width = `${pct}%`;
  // A finished job's last message ("sleeping") would read as what it does now.
  const msg = j.status === 'running' ? (j.status_message || '') : '';
  return [h('span', { class: 'bar', title: `${pct.toFixed(0)} %` }, bar),
    h('span', { class: 'progress-msg' }, msg)];
}

function jobsPage(main) {
  const status = h('select', { id: 'f-status', onchange: (e) => { filters.status = e.target.value; loadJobs().catch(() => {}); changed(); } },
    ['', 'pending', 'running', 'completed', 'failed', 'cancelled'].map((v) => h('option', { value: v }, v || 'any state')));
  status.value = filters.status;
  const cap = h('input', { id: 'f-capability', placeholder: 'capability', value: filters.capability,
    oninput: (e) => { filters.capability = e.target.value.trim(); changed(); } });
  const run = h('input', { id: 'f-run', placeholder: 'run id', value: filters.run_id,
    onchange: (e) => { filters.run_id = e.target.value.trim(); loadJobs().catch(() => {}); changed(); } });
  const count = h('span', { class: 'muted', id: 'jobs-count' });
  const tbody = h('tbody');
  main.append(
    h('h1', {}, 'Jobs'),
    h('div', { class: 'filters' }, status, cap, run, count),
    h('table', { id: 'jobs-table' },
      h('thead', {}, h('tr', {},
        h('th', {}, 'Job'), h('th', {}, 'Capability'), h('th', {}, 'State'), h('th', { class: 'num' }, 'Priority'),
        h('th', {}, 'Progress'), h('th', {}, 'Submitted'), h('th', { class: 'num' }, 'Duration'),
        h('th', {}, 'Why it waits'), h('th', {}, ''))),
      tbody),
  );
  loadJobs().catch((e) => toast(`jobs: ${e.message}`, true));
  let visible = [];
  const stopWaits = every(1500, async () => {
    const pending = visible.filter((j) => j.status === 'pending').map((j) => j.id);
    if (!pending.length) {
      if (waits.size) {
        waits.clear();
        changed();
      }
      return;
    }
    const w = await api(`/v1/queue/waiting?jobs=${pending.map(encodeURIComponent).join(',')}`);
    waits.clear();
    for (const r of w.waiting) waits.set(r.job_id, r);
    changed();
  });
  const ticker = setInterval(changed, 1000);
  // One row per job, rebuilt only when what it shows changes (a click or a selection in it
  // survives the live updates); the duration cell ticks in place.
  const rows = new Map();
  const rowOf = (j) => {
    const why = j.status === 'pending' ? waits.get(j.id) : null;
    const sig = JSON.stringify([j.status, j.priority, j.progress, j.status_message, why && why.message,
      j.instance_id, j.task_name, j.method, j.submitted_at]);
    let row = rows.get(j.id);
    if (!row || row.sig !== sig) {
      const live = !TERMINAL.has(j.status);
      const dur = h('td', { class: 'num dur' });
      const tr = h('tr', { dataset: { jobId: j.id, status: j.status } },
        h('td', { class: 'mono' }, h('a', { href: `#/jobs/${encodeURIComponent(j.id)}`, title: j.id }, short(j.id))),
        h('td', {}, j.instance_id, j.task_name ? h('span', { class: 'muted' }, ` ${j.task_name}.${j.method || ''}`) : ''),
        h('td', { class: 'status' }, pill(j.status)),
        h('td', { class: 'num' }, String(j.priority || 0),
          j.status === 'pending' ? [' ', h('button', { class: 'small prio-up', title: 'Raise priority', onclick: () => reprioritise(j, 1) }, '↑'),
            h('button', { class: 'small prio-down', title: 'Lower priority', onclick: () => reprioritise(j, -1) }, '↓')] : ''),
        h('td', {}, j.status === 'running' || j.progress ? progressCell(j) : ''),
        h('td', {}, when(j.submitted_at)),
        dur,
        h('td', { class: 'why', dataset: { kind: why ? why.kind : '' } }, why ? why.message : ''),
        h('td', {}, live ? h('button', { class: 'small danger cancel', onclick: () => cancelJob(j.id) }, 'Cancel') : ''),
      );
      row = { sig, tr, dur };
      rows.set(j.id, row);
    }
    row.dur.textContent = duration(j);
    return row.tr;
  };
  const empty = h('tr', {}, h('td', { colspan: 9, class: 'muted' }, 'No job matches.'));
  return {
    leave() {
      stopWaits();
      clearInterval(ticker);
      shown.clear();
    },
    update() {
      const all = [...jobs.values()].filter(jobMatches);
      visible = all
        .sort((a, b) => (b.submitted_at || '').localeCompare(a.submitted_at || '') || b.id.localeCompare(a.id))
        .slice(0, 200);
      shown.clear();
      visible.forEach((j) => shown.add(j.id));
      for (const id of rows.keys()) if (!shown.has(id)) rows.delete(id);
      count.textContent = all.length > visible.length ? `${visible.length} of ${all.length} shown` : `${visible.length} shown`;
      const trs = visible.length ? visible.map(rowOf) : [empty];
      const same = trs.length === tbody.children.length && trs.every((tr, i) => tbody.children[i] === tr);
      if (!same) tbody.replaceChildren(...trs);
    },
  };
}

// ---------------------------------------------------------------- Job detail

function kv(pairs) {
  return h('dl', { class: 'kv' }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== '')
    .map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function timelineItem(row) {
  const p = row.payload || {};
  let what = row.event_type;
  if (row.event_type === 'state_transition') what = `${p.from || '?'} → ${p.to}`;
  else if (row.event_type === 'admission_decided') what = `admitted (lane ${p.lanes_in_use}/${p.lanes}${p.exclusive ? ', alone: first run' : ''})`;
  else if (row.event_type === 'cancel_phase_changed') what = `cancel: ${p.from || '?'} → ${p.to}`;
  const detail = { ...p };
  delete detail.job_snapshot;
  delete detail.spec;
  return h('li', { dataset: { seq: row.seq, type: row.event_type } },
    h('span', { class: 'ts' }, when(row.ts)), h('strong', {}, what),
    Object.keys(detail).length && row.event_type !== 'state_transition' ? h('span', { class: 'muted' }, ` ${JSON.stringify(detail)}`) : '');
}

function jobPage(main, id) {
  const head = h('div');
  const timeline = h('ul', { class: 'timeline', id: 'timeline' });
  const logs = h('ul', { class: 'logs', id: 'logs' });
  const body = h('div', { class: 'grid2' });
  main.append(h('p', {}, h('a', { href: '#/jobs' }, '← Jobs')), head, body,
    h('div', { class: 'grid2' },
      h('section', {}, h('h2', {}, 'Timeline'), h('div', { class: 'panel' }, timeline)),
      h('section', {}, h('h2', {}, 'Logs'), h('div', { class: 'panel' }, logs))));
  const seen = new Set();
  let submittedArgs;
  const addRow = (row) => {
    if (row.seq === null || row.seq === undefined || seen.has(row.seq)) return;
    seen.add(row.seq);
    timeline.append(timelineItem(row));
    // The arguments as submitted (the job itself does not keep them).
    if (row.event_type === 'job_submitted' && row.payload && row.payload.spec) {
      const spec = row.payload.spec;
      submittedArgs = spec.kwargs || (spec.kwargs_ref ? { '(kept by reference)': spec.kwargs_ref } : {});
      if (spec.args && spec.args.length) submittedArgs = { args: spec.args, kwargs: submittedArgs };
      changed();
    }
  };
  let job = null;
  shown.add(id);
  const load = async () => {
    job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    mergeJob(job);
    changed();
  };
  load().catch((e) => head.replaceChildren(h('h1', {}, `Job ${id}`), h('p', { class: 'error' }, e.message)));
  api(`/v1/jobs/${encodeURIComponent(id)}/journal`).then((t) => t.events.forEach(addRow), () => {});
  const off = live.on((row) => {
    if (row.job_id !== id) return;
    addRow(row);
    if (row.event_type !== 'progress_changed') load().catch(() => {});
  });
  const abort = new AbortController();
  (async () => {
    let after = 0;
    while (!abort.signal.aborted) {
      try {
        await readStream(`/v1/logs?job=${encodeURIComponent(id)}&follow=true&after=${after}`, {
          signal: abort.signal,
          onEvent: (e) => {
            const r = JSON.parse(e.data);
            if (r.seq) after = Math.max(after, r.seq);
            logs.append(h('li', { class: `lvl-${r.level}` }, `${when(r.ts)} ${r.level} ${r.logger_name}: ${r.message}`,
              r.exc_text ? h('pre', {}, r.exc_text) : ''));
          },
        });
      } catch {
        // Retried.
      }
      await sleep(1000);
    }
  })();
  return {
    leave() {
      off();
      abort.abort();
      shown.delete(id);
    },
    update() {
      const j = jobs.get(id) || job;
      if (!j) return;
      const liveJob = !TERMINAL.has(j.status);
      head.replaceChildren(
        h('h1', {}, 'Job ', h('span', { class: 'mono' }, j.id), ' ', pill(j.status)),
        h('div', { class: 'actions-row' },
          liveJob ? h('button', { class: 'danger cancel', onclick: () => cancelJob(j.id) }, 'Cancel') : '',
          j.composition_id ? h('a', { href: `#/compositions/${encodeURIComponent(j.composition_id)}` }, `composition ${short(j.composition_id)}`) : ''),
        j.status === 'running' ? h('p', {}, progressCell(j)) : '',
      );
      body.replaceChildren(
        h('section', {}, h('h2', {}, 'Job'), h('div', { class: 'panel' }, kv([
          ['capability', j.instance_id], ['task', j.task_name ? `${j.task_name}.${j.method}` : 'execute'],
          ['priority', String(j.priority || 0)], ['submitted', j.submitted_at], ['started', j.started_at],
          ['completed', j.completed_at], ['duration', duration(j)], ['attempts', j.retry_count !== undefined ? String(j.retry_count + 1) : ''],
          ['run id', j.run_id], ['actor', j.actor], ['message', j.status === 'running' ? j.status_message : ''],
        ])), h('h3', {}, 'Arguments'), h('pre', { id: 'kwargs' }, submittedArgs === undefined ? '…' : pretty(submittedArgs))),
        h('section', {},
          h('h2', {}, j.error ? 'Error' : 'Result'),
          h('pre', { id: j.error ? 'error' : 'result' }, j.error ? pretty(j.error) : j.result === undefined || j.result === null ? (liveJob ? '(running)' : 'null') : pretty(j.result)),
          j.accounts && j.accounts.length ? [h('h3', {}, 'Accounts'), h('pre', {}, pretty(j.accounts))] : ''),
      );
    },
  };
}

// ---------------------------------------------------------------- Compositions

const compositions = new Map();

function refreshComposition(id) {
  return api(`/v1/compositions/${encodeURIComponent(id)}`).then((run) => {
    compositions.set(run.id, run);
    changed();
  }, () => {});
}

const compTimers = new Map();
live.on((row) => {
  const id = row.composition_id;
  if (!id || compTimers.has(id)) return;
  compTimers.set(id, setTimeout(() => {
    compTimers.delete(id);
    refreshComposition(id);
  }, 100));
});

function nodeCounts(run) {
  const counts = {};
  for (const n of Object.values(run.nodes)) counts[n.state] = (counts[n.state] || 0) + 1;
  return Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(' · ');
}

function cancelComposition(id) {
  return act('cancel', async () => {
    await api(`/v1/compositions/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
    toast(`cancelling composition ${short(id)}`);
    refreshComposition(id);
  });
}

function compositionsPage(main) {
  const tbody = h('tbody');
  main.append(h('h1', {}, 'Compositions'),
    h('table', { id: 'compositions-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Composition'), h('th', {}, 'State'), h('th', {}, 'Nodes'),
        h('th', {}, 'Submitted'), h('th', {}, ''))),
      tbody));
  api('/v1/compositions?limit=100').then((r) => {
    for (const run of r.compositions) compositions.set(run.id, run);
    changed();
  }, (e) => toast(e.message, true));
  return {
    update() {
      const runs = [...compositions.values()].sort((a, b) => b.submitted_at.localeCompare(a.submitted_at));
      tbody.replaceChildren(...runs.map((run) => h('tr', { dataset: { compositionId: run.id, status: run.status } },
        h('td', { class: 'mono' }, h('a', { href: `#/compositions/${encodeURIComponent(run.id)}` }, short(run.id))),
        h('td', { class: 'status' }, pill(run.status)),
        h('td', {}, nodeCounts(run)),
        h('td', {}, when(run.submitted_at)),
        h('td', {}, run.status === 'running' ? h('button', { class: 'small danger cancel', onclick: () => cancelComposition(run.id) }, 'Cancel') : ''))));
      if (!runs.length) tbody.append(h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'No composition on this host yet.')));
    },
  };
}

// A node's state as its job tells it: a node whose job is still queued is pending.
function nodeState(n) {
  const job = n.job_id ? jobs.get(n.job_id) : null;
  if (n.state === 'running' && job && job.status === 'pending') return 'pending';
  return n.state;
}

// Nodes in layers by their longest path from a root; edges from each upstream node.
function drawDag(run) {
  const depth = {};
  const visit = (id, seen = new Set()) => {
    if (depth[id] !== undefined) return depth[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    const ups = run.deps[id] || [];
    depth[id] = ups.length ? 1 + Math.max(...ups.map((u) => visit(u, seen))) : 0;
    return depth[id];
  };
  const ids = Object.keys(run.nodes);
  ids.forEach((id) => visit(id));
  const layers = [];
  for (const id of ids) (layers[depth[id]] = layers[depth[id]] || []).push(id);
  const W = 170;
  const H = 54;
  const GX = 70;
  const GY = 24;
  const pos = {};
  layers.forEach((layer, x) => layer.forEach((id, y) => {
    pos[id] = { x: 20 + x * (W + GX), y: 20 + y * (H + GY) };
  }));
  const width = 40 + layers.length * (W + GX) - GX;
  const height = 40 + Math.max(...layers.map((l) => l.length)) * (H + GY) - GY;
  const svgEl = s('svg', { class: 'dag', id: 'dag', viewBox: `0 0 ${width} ${height}`, height });
  const over = [];
  for (const id of ids) {
    for (const up of run.deps[id] || []) {
      const a = pos[up];
      const b = pos[id];
      const x1 = a.x + W;
      const y1 = a.y + H / 2;
      const x2 = b.x;
      const y2 = b.y + H / 2;
      // An edge that skips a layer would pass under that layer's boxes: it is drawn over
      // them, dashed.
      const skips = depth[id] - depth[up] > 1;
      const edge = s('path', { class: skips ? 'edge skip' : 'edge', d: `M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}` });
      if (skips) over.push(edge);
      else svgEl.append(edge);
    }
  }
  for (const id of ids) {
    const n = run.nodes[id];
    const state = nodeState(n);
    const def = (run.composition.nodes || []).find((d) => d.id === id) || {};
    const clip = (text, max) => (text.length > max ? `${text.slice(0, max - 1)}…` : text);
    const g = s('g', { class: `node s-${state}`, dataset: { node: id, state },
      transform: `translate(${pos[id].x},${pos[id].y})`,
      onclick: () => { if (n.job_id) location.hash = `#/jobs/${encodeURIComponent(n.job_id)}`; } },
    s('rect', { width: W, height: H, rx: 8 }),
    s('title', {}, `${id} · ${state} · ${def.instance_id || ''}`),
    s('text', { x: 10, y: 20 }, clip(id, 22)),
    s('text', { x: 10, y: 38, class: 'state' }, clip(`${state} · ${def.instance_id || ''}`, 26)));
    svgEl.append(g);
  }
  svgEl.append(...over);
  return svgEl;
}

function compositionPage(main, id) {
  const head = h('div');
  const dag = h('div');
  const tbody = h('tbody');
  main.append(h('p', {}, h('a', { href: '#/compositions' }, '← Compositions')), head, dag,
    h('h2', {}, 'Nodes'),
    h('table', { id: 'nodes-table' }, h('thead', {}, h('tr', {}, h('th', {}, 'Node'), h('th', {}, 'State'),
      h('th', {}, 'Job'), h('th', {}, 'Result or error'))), tbody));
  refreshComposition(id).then(() => {
    if (!compositions.has(id)) head.replaceChildren(h('h1', {}, `Composition ${id}`), h('p', { class: 'error' }, 'Not on this host.'));
  });
  return {
    update() {
      const run = compositions.get(id);
      if (!run) return;
      head.replaceChildren(h('h1', {}, 'Composition ', h('span', { class: 'mono' }, run.id), ' ', pill(run.status)),
        run.status === 'running' ? h('div', { class: 'actions-row' }, h('button', { class: 'danger cancel', onclick: () => cancelComposition(run.id) }, 'Cancel')) : '');
      dag.replaceChildren(drawDag(run));
      tbody.replaceChildren(...Object.entries(run.nodes).map(([node, n]) => h('tr', { dataset: { node, state: nodeState(n) } },
        h('td', {}, node), h('td', {}, pill(nodeState(n))),
        h('td', { class: 'mono' }, n.job_id ? h('a', { href: `#/jobs/${encodeURIComponent(n.job_id)}` }, short(n.job_id)) : ''),
        h('td', {}, n.error ? h('pre', { class: 'error' }, pretty(n.error)) : n.result !== undefined && n.result !== null ? h('pre', {}, pretty(n.result)) : ''))));
    },
  };
}

// ---------------------------------------------------------------- Capabilities

// Whether the installed manifest and the live capability disagree on anything.
const drifted = (drift) => !!drift && Object.values(drift).some(Boolean);

function capabilitiesPage(main) {
  const tbody = h('tbody');
  main.append(h('h1', {}, 'Capabilities'),
    h('table', { id: 'capabilities-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Capability'), h('th', {}, 'Kind'), h('th', {}, 'Version'),
        h('th', {}, 'Instances'), h('th', {}, 'Adapters'))),
      tbody));
  let caps = null;
  const stop = every(3000, async () => {
    caps = await api('/v1/capabilities');
    changed();
  });
  return {
    leave: stop,
    update() {
      if (!caps) return;
      tbody.replaceChildren(...caps.capabilities.map((c) => h('tr', { dataset: { capability: c.name } },
        h('td', {}, h('a', { href: `#/capabilities/${encodeURIComponent(c.name)}` }, c.name),
          c.description ? h('div', { class: 'muted' }, c.description) : ''),
        h('td', {}, c.kind), h('td', {}, c.version || ''),
        h('td', {}, c.instances.length ? c.instances.map((i) => h('div', {},
          h('a', { href: `#/capabilities/${encodeURIComponent(i.id)}` }, i.id), ' ', pill(i.state),
          drifted(i.drift) ? h('span', { class: 'pill s-failed', title: JSON.stringify(i.drift) }, 'drift') : '',
          i.adapters && i.adapters.length ? h('span', { class: 'muted' }, ` bound: ${i.adapters.join(', ')}`) : '')) : h('span', { class: 'muted' }, 'not loaded')),
        h('td', {}, (c.adapters || []).join(', ')))));
    },
  };
}

// A form from a JSON Schema's top-level properties: numbers, booleans, enums and strings get
// inputs; anything else is edited as JSON.
function configForm(schema, config, onSubmit, said) {
  const props = (schema && schema.properties) || {};
  const form = h('form', { class: 'config', id: 'config-form', novalidate: true });
  const readers = {};
  for (const [name, prop] of Object.entries(props)) {
    const type = Array.isArray(prop.type) ? prop.type.find((t) => t !== 'null') : prop.type;
    const value = config && name in config ? config[name] : prop.default;
    let input;
    if (prop.enum) {
      input = h('select', { name }, prop.enum.map((v) => h('option', { value: JSON.stringify(v) }, String(v))));
      input.value = JSON.stringify(value);
      readers[name] = () => JSON.parse(input.value);
    } else if (type === 'boolean') {
      input = h('input', { type: 'checkbox', name });
      input.checked = !!value;
      readers[name] = () => input.checked;
    } else if (type === 'integer' || type === 'number') {
      input = h('input', { type: 'text', inputmode: 'decimal', name, value: value === undefined || value === null ? '' : String(value) });
      readers[name] = () => {
        const t = input.value.trim();
        if (t === '') return null;
        const n = Number(t);
        return Number.isNaN(n) ? t : n;
      };
    } else if (type === 'string') {
      input = h('input', { type: 'text', name, value: value === undefined || value === null ? '' : value });
      readers[name] = () => input.value;
    } else {
      input = h('textarea', { name, rows: 3 }, value === undefined ? '' : JSON.stringify(value));
      readers[name] = () => {
        try {
          return JSON.parse(input.value);
        } catch {
          return input.value;
        }
      };
    }
    const bounds = [prop.minimum !== undefined ? `≥ ${prop.minimum}` : '', prop.maximum !== undefined ? `≤ ${prop.maximum}` : ''].filter(Boolean).join(', ');
    form.append(h('label', { for: `cfg-${name}` }, name),
      h('div', {}, input, h('div', { class: 'hint' }, [type, bounds, prop.description].filter(Boolean).join(' · ')),
        h('div', { class: 'field-error', dataset: { field: name } })));
    input.id = `cfg-${name}`;
  }
  const status = h('span', { class: 'muted', id: 'config-status' }, said || '');
  form.append(h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Save config'), status));
  form.onsubmit = async (e) => {
    e.preventDefault();
    form.querySelectorAll('.field-error').forEach((el) => { el.textContent = ''; });
    form.querySelectorAll('[aria-invalid]').forEach((el) => el.removeAttribute('aria-invalid'));
    const next = {};
    for (const [name, read] of Object.entries(readers)) {
      const v = read();
      if (v !== null) next[name] = v;
    }
    status.textContent = 'saving…';
    try {
      await onSubmit(next);
      status.textContent = 'saved';
    } catch (err) {
      status.textContent = err.message;
      status.className = 'error';
      const fields = (err.body && err.body.error && err.body.error.fields) || [];
      for (const f of fields) {
        const name = String(f).split(/[./[]/)[0];
        const slot = form.querySelector(`.field-error[data-field="${CSS.escape(name)}"]`);
        if (slot) slot.textContent = err.message;
        const input = form.querySelector(`[name="${CSS.escape(name)}"]`);
        if (input) input.setAttribute('aria-invalid', 'true');
      }
    }
  };
  return form;
}

function capabilityPage(main, id) {
  const box = h('div');
  main.append(h('p', {}, h('a', { href: '#/capabilities' }, '← Capabilities')), box);
  const path = `/v1/capabilities/${encodeURIComponent(id)}`;
  let info = null;
  let said = '';
  const load = async () => {
    info = await api(path);
    render();
  };
  const lifecycle = (verb, body) => act(verb, async () => {
    const r = await api(`/v1/capabilities/${encodeURIComponent(verb === 'load' ? info.name : id)}/${verb}`, { method: 'POST', body: body || {} });
    toast(`${verb}: ${id}`);
    if (verb === 'load' && r && r.id && r.id !== id) location.hash = `#/capabilities/${encodeURIComponent(r.id)}`;
    await load().catch(() => render());
  });
  const render = () => {
    if (!info) return;
    const loaded = info.loaded;
    const surface = info.structural_surface || {};
    const methods = (surface.methods || []).map((m) => h('li', {}, h('code', {}, m.name),
      h('span', { class: 'muted' }, m.signature || `(${(m.params || []).join(', ')})`)));
    const tasks = info.tasks || [];
    const grants = info.grants;
    box.replaceChildren(
      h('h1', {}, info.id || info.name, ' ', loaded ? pill(info.state || (info.enabled ? 'idle' : 'disabled')) : h('span', { class: 'pill s-skipped' }, 'not loaded')),
      info.reason ? h('p', { class: 'error' }, info.reason) : '',
      h('p', { class: 'muted' }, `${info.kind} · ${info.name} ${info.version || ''}`, info.description ? ` — ${info.description}` : ''),
      h('div', { class: 'actions-row', id: 'lifecycle' },
        loaded ? [
          info.enabled ? h('button', { id: 'disable', onclick: () => lifecycle('disable') }, 'Disable') : h('button', { id: 'enable', onclick: () => lifecycle('enable') }, 'Enable'),
          h('button', { id: 'reload', onclick: () => lifecycle('reload') }, 'Reload'),
          h('button', { id: 'unload', class: 'danger', onclick: () => lifecycle('unload') }, 'Unload'),
        ] : h('button', { id: 'load', onclick: () => lifecycle('load') }, 'Load')),
      h('div', { class: 'grid2' },
        h('section', {},
          h('h2', {}, 'Config'),
          loaded
            ? h('div', { class: 'panel' }, configForm(info.config_schema, info.config, async (next) => {
              await api(`${path}/config`, { method: 'PUT', body: next });
              said = 'saved';
              await load();
            }, said))
            : h('pre', {}, pretty(info.config_schema || {})),
          h('h2', {}, 'Tasks and methods'),
          tasks.length ? h('p', { id: 'tasks' }, 'Tasks: ', tasks.map((t, i) => [i ? ', ' : '', h('code', {}, t)])) : '',
          methods.length ? h('ul', { id: 'methods' }, methods) : h('p', { class: 'muted' }, 'No method in its structural surface.'),
        ),
        h('section', {},
          h('h2', {}, 'Adapters'),
          h('table', {}, h('tbody', {}, (info.adapters || []).map((a) => h('tr', {},
            h('td', {}, a.name), h('td', {}, a.compatible ? pill('completed') : pill('failed')),
            h('td', { class: 'muted' }, a.compatible ? (a.task || '') : JSON.stringify(a.verdict)))))),
          loaded && info.bound_adapters && info.bound_adapters.length ? h('p', {}, `Bound: ${info.bound_adapters.join(', ')}`) : '',
          drifted(info.drift) ? [h('h3', {}, 'Drift'), h('pre', { class: 'error' }, pretty(info.drift))] : '',
          h('h2', {}, 'Sandbox grants'),
          grants ? h('pre', { id: 'grants' }, pretty(grants)) : h('p', { class: 'muted' }, 'A native worker: no sandbox.'),
          h('h2', {}, 'Measured profile'),
          info.profile ? h('pre', { id: 'profile' }, pretty(info.profile)) : h('p', { class: 'muted' }, 'No run measured yet for this config.'),
        )),
    );
  };
  load().catch((e) => box.replaceChildren(h('h1', {}, id), h('p', { class: 'error' }, e.message)));
  return {};
}

// ---------------------------------------------------------------- start

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
}

document.addEventListener('DOMContentLoaded', () => {
  applyTheme(localStorage.getItem('cjm-theme'));
  $('#theme').addEventListener('click', () => {
    const dark = document.documentElement.dataset.theme
      ? document.documentElement.dataset.theme === 'dark'
      : matchMedia('(prefers-color-scheme: dark)').matches;
    const next = dark ? 'light' : 'dark';
    localStorage.setItem('cjm-theme', next);
    applyTheme(next);
  });
  window.addEventListener('hashchange', route);
  route();
  live.run();
  every(2000, sample);
  api('/v1/health').then((hl) => { $('#host-id').textContent = `host ${short(hl.host_id)} · v${hl.version}`; }, () => {});
});
