// matchplane's operator console. Reads the backend's operator endpoints (the same any tool
// can read) with the sign-in's cookie; every state-changing request carries the sign-in's
// CSRF token. Renders with DOM calls and textContent only: nothing from the API is ever
// parsed as HTML.

const base = new URL('../', location.href);
const POLL_MS = 2000;
const AUDIT_EVERY = 3; // polls
let csrf = '';
let timer = null;
let polls = 0;
let queueProfiles = new Map();

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, { method = 'GET', body } = {}) {
  const headers = { accept: 'application/json' };
  if (method !== 'GET') headers['x-csrf-token'] = csrf;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(new URL(path, base), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
    cache: 'no-store',
  });
  if (response.status === 204) return null;
  let json = null;
  try {
    json = await response.json();
  } catch {
    json = null;
  }
  if (!response.ok) {
    const error = json && json.error ? json.error : { code: 'http_' + response.status, message: response.statusText };
    throw new ApiError(response.status, error.code, error.message);
  }
  return json;
}

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

function row(cells) {
  const tr = document.createElement('tr');
  for (const cell of cells) {
    const td = document.createElement('td');
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell === undefined || cell === null ? '–' : String(cell);
    tr.append(td);
  }
  return tr;
}

function fill(tableId, rows, empty) {
  const body = $(tableId).tBodies[0];
  const columns = $(tableId).tHead.rows[0].cells.length;
  if (rows.length === 0) {
    const td = el('td', empty, { colspan: String(columns), class: 'muted' });
    const tr = document.createElement('tr');
    tr.append(td);
    body.replaceChildren(tr);
  } else {
    body.replaceChildren(...rows);
  }
}

function ms(value) {
  if (value === null || value === undefined) return '–';
  if (value < 1000) return `${Math.round(value)} ms`;
  if (value < 60000) return `${(value / 1000).toFixed(1)} s`;
  return `${Math.floor(value / 60000)} min ${Math.round((value % 60000) / 1000)} s`;
}

const pair = (l) => (l.count ? `${ms(l.p50_ms)} / ${ms(l.p99_ms)}` : '–');
const rate = (r) => r.m1.toFixed(2);
const since = (iso) => ms(Date.now() - Date.parse(iso));
const when = (iso) => new Date(iso).toLocaleTimeString();

function showProblem(text) {
  $('problem').textContent = text;
}

function renderOverview(o) {
  queueProfiles = new Map(o.queues.map((q) => [q.name, q.profile]));
  fill(
    'latency',
    [
      ['time to match (join → formed)', o.time_to_match],
      ['time to play (join → server ready)', o.time_to_play],
    ].map(([name, w]) => row([name, pair(w.m1), pair(w.m5), pair(w.m15)])),
    '',
  );
  $('totals').textContent =
    `live sessions: ${o.sessions.allocating} allocating, ${o.sessions.matched} matched · ` +
    `sessions failed /s (1 / 5 / 15 min): ${o.failed_per_s.m1.toFixed(2)} / ${o.failed_per_s.m5.toFixed(2)} / ${o.failed_per_s.m15.toFixed(2)}`;
  fill(
    'queues',
    o.queues.map((q) => {
      const allows = [];
      if (q.allows_now.skill_spread !== null && q.allows_now.skill_spread !== undefined)
        allows.push(`skill spread ≤ ${Math.round(q.allows_now.skill_spread)}`);
      if (q.allows_now.max_latency_ms !== null && q.allows_now.max_latency_ms !== undefined)
        allows.push(`latency ≤ ${Math.round(q.allows_now.max_latency_ms)} ms`);
      return row([
        q.name,
        q.depth,
        ms(q.oldest_wait_ms),
        rate(q.players_in_per_s),
        rate(q.players_out_per_s),
        rate(q.timed_out_per_s),
        allows.join(', ') || 'any',
        q.profile || 'built-in',
        q.formed_by || (q.name === 'default' ? 'every replica' : 'nobody now'),
        pair(q.time_to_match.m1),
      ]);
    }),
    'no queues',
  );
  const select = document.querySelector('#filters select[name=queue]');
  const chosen = select.value;
  const names = o.queues.map((q) => q.name);
  if ([...select.options].slice(1).map((x) => x.value).join() !== names.join()) {
    select.replaceChildren(el('option', 'any', { value: '' }), ...names.map((n) => el('option', n, { value: n })));
    select.value = names.includes(chosen) ? chosen : '';
  }
  fill(
    'replicas',
    o.replicas.map((r) => {
      const owns = [...r.forms.map((q) => `forms ${q}`), ...(r.keeps_warm_pods ? ['keeps warm Pods'] : [])];
      return row([
        r.health.instance,
        el('span', r.state, { class: `state state-${r.state}` }),
        `${ms(r.seen_ms_ago)} ago`,
        r.health.redis,
        r.health.postgres,
        r.health.history_backlog,
        r.health.sessions_supervised,
        owns.join(', ') || '–',
        when(r.started_at),
      ]);
    }),
    'no replica has reported',
  );
  const regions = [];
  for (const r of o.replicas) {
    for (const [name, g] of Object.entries(r.health.regions || {})) {
      regions.push(
        row([
          name,
          r.health.instance,
          el('span', g.up ? 'up' : 'down', { class: `state state-${g.up ? 'ready' : 'gone'}` }),
          g.up ? '–' : `${g.down_seconds} s`,
          g.reason || '–',
        ]),
      );
    }
  }
  $('regions-section').hidden = regions.length === 0;
  fill('regions', regions, '');
  const warm = [];
  for (const r of o.replicas) {
    const pools = [];
    if (r.health.warm_servers) pools.push(['built-in', r.health.warm_servers]);
    for (const [profile, w] of Object.entries(r.health.warm_profiles || {})) pools.push([profile, w]);
    for (const [profile, w] of pools)
      warm.push(row([r.health.instance, profile, w.idle, w.starting, w.target, w.handed, w.cold_starts]));
  }
  fill('warm', warm, 'no replica keeps warm servers');
  fill(
    'failures',
    o.failures.map((f) => row([when(f.at), f.session_id, f.detail, f.instance])),
    'no failures',
  );
}

function filters() {
  const params = new URLSearchParams();
  for (const input of $('filters').elements) {
    if (input.name && input.value.trim()) params.set(input.name, input.value.trim());
  }
  params.set('limit', '200');
  return params;
}

function renderSessions(s) {
  $('sessions-count').textContent =
    s.matching > s.count ? `${s.matching} match; the oldest ${s.count} shown` : `${s.matching} match`;
  fill(
    'sessions',
    s.sessions.map((v) => {
      const players = document.createElement('span');
      v.players.forEach((p, i) => {
        if (i) players.append(', ');
        players.append(v.connected && v.connected.includes(p) ? el('strong', p) : p);
      });
      const end = el('button', 'End', { type: 'button', class: 'danger', 'aria-label': `End session ${v.session_id}` });
      end.addEventListener('click', () => confirmEnd(v));
      return row([
        el('code', v.session_id.slice(0, 8), { title: v.session_id }),
        v.status,
        v.queue || 'default',
        v.region,
        v.version,
        players,
        v.server ? `${v.server}${v.addr ? ' @ ' + v.addr : ''}` : '–',
        v.instance,
        since(v.created_at),
        end,
      ]);
    }),
    'no live session matches',
  );
}

function renderAudit(a) {
  fill(
    'audit',
    a.entries.map((e) => row([when(e.at), e.actor, e.remote, e.action, e.target, e.outcome])),
    'no operator action yet',
  );
}

async function poll() {
  try {
    const [overview, sessions] = await Promise.all([
      api('operator/overview'),
      api('sessions/active?' + filters().toString()),
    ]);
    renderOverview(overview);
    renderSessions(sessions);
    if (polls % AUDIT_EVERY === 0) {
      renderAudit(await api('operator/audit?limit=50'));
      await refreshVersions();
    }
    polls += 1;
    showProblem('');
    $('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return signedOut('Your sign-in has ended; sign in again.');
    showProblem(`Could not refresh: ${e.message}`);
  }
}

function schedule() {
  clearTimeout(timer);
  if (!document.hidden && csrf) timer = setTimeout(async () => {
    await poll();
    schedule();
  }, POLL_MS);
}

/// Asks for a confirmation in the page's dialog; resolves to whether it was given.
function confirmed({ title, text, yes, no }) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-yes').textContent = yes;
  $('confirm-cancel').textContent = no;
  dialog.returnValue = '';
  return new Promise((resolve) => {
    dialog.onclose = () => resolve(dialog.returnValue === 'yes');
    dialog.showModal();
    $('confirm-yes').focus();
  });
}

async function confirmEnd(view) {
  const yes = await confirmed({
    title: 'End this session?',
    text: `Session ${view.session_id} ends for its players ${view.players.join(', ')} now; its server is stopped.`,
    yes: 'End session',
    no: 'Keep it',
  });
  if (yes) {
    try {
      const ended = await api(`match/${encodeURIComponent(view.session_id)}/end`, { method: 'POST' });
      showProblem('');
      $('updated').textContent = `session ${ended.session_id} ended (${ended.end_reason})`;
    } catch (e) {
      showProblem(`The session was not ended: ${e.message}`);
    }
    polls = 0;
    await poll();
    await lookUp();
  }
}

function renderVersions(list) {
  $('versions-section').hidden = list.profiles.length === 0;
  const blocks = list.profiles.map((p) => {
    const block = el('div', null, { class: 'profile-versions' });
    block.append(el('h3', `${p.profile} (queues: ${p.queues.join(', ') || 'none'})`));
    const table = el('table');
    const head = table.createTHead().insertRow();
    for (const name of ['version', 'weight', 'queue file', 'state', 'live sessions', ''])
      head.append(el('th', name, { scope: 'col' }));
    const body = table.createTBody();
    const inputs = new Map();
    for (const v of p.versions) {
      const input = el('input', null, {
        type: 'number', min: '0', max: '1000', step: '1', value: String(v.weight),
        'aria-label': `weight of ${p.profile} ${v.name}`, name: `weight-${p.profile}-${v.name}`,
      });
      inputs.set(v.name, input);
      const state = v.draining ? (v.drained_at ? `drained ${when(v.drained_at)}` : 'draining') : 'taking sessions';
      const drain = el('button', 'Drain', { type: 'button', class: 'danger', 'aria-label': `Drain ${p.profile} ${v.name}` });
      drain.disabled = v.draining;
      drain.addEventListener('click', () => drainVersion(p.profile, v.name, v.live_sessions));
      body.append(row([v.name, input, v.file_weight, state, v.live_sessions, drain]));
    }
    const save = el('button', 'Save weights', { type: 'button', 'aria-label': `Save the weights of ${p.profile}` });
    save.addEventListener('click', () => saveWeights(p.profile, inputs));
    const wrap = el('div', null, { class: 'scroll' });
    wrap.append(table);
    block.append(wrap, save);
    return block;
  });
  // A weight being typed is not replaced under the operator's hands.
  const editing = document.activeElement;
  if (!(editing && editing.tagName === 'INPUT' && $('versions').contains(editing)))
    $('versions').replaceChildren(...blocks);
}

async function refreshVersions() {
  renderVersions(await api('operator/versions'));
}

async function saveWeights(profile, inputs) {
  const weights = {};
  for (const [name, input] of inputs) weights[name] = Number(input.value);
  try {
    await api(`operator/versions/${encodeURIComponent(profile)}`, { method: 'PUT', body: { weights } });
    showProblem('');
    $('updated').textContent = `weights of ${profile} saved`;
  } catch (e) {
    showProblem(`The weights were not saved: ${e.message}`);
  }
  document.activeElement.blur();
  polls = 0;
  await refreshVersions();
  await poll();
}

async function drainVersion(profile, version, live) {
  const yes = await confirmed({
    title: `Drain ${profile} ${version}?`,
    text: `No new session will run ${version}; its ${live} running sessions play to their end. Set its weight again to undo.`,
    yes: 'Drain',
    no: 'Keep it',
  });
  if (!yes) return;
  try {
    await api(`operator/versions/${encodeURIComponent(profile)}/${encodeURIComponent(version)}/drain`, { method: 'POST' });
    showProblem('');
    $('updated').textContent = `${profile} ${version} draining`;
  } catch (e) {
    showProblem(`${version} was not drained: ${e.message}`);
  }
  polls = 0;
  await refreshVersions();
  await poll();
}

let lookedUp = '';

async function lookUp(event) {
  if (event) event.preventDefault();
  const id = event ? $('player-id').value.trim() : lookedUp;
  if (!id) return;
  lookedUp = id;
  const out = $('player');
  out.replaceChildren(el('p', 'looking up…', { class: 'muted' }));
  try {
    const q = encodeURIComponent(id);
    const [status, history] = await Promise.all([
      api(`match/status?player_id=${q}`),
      api(`players/${q}/matches?limit=10`),
    ]);
    const summary = el('p');
    summary.append(el('strong', id), ` is ${status.status}`);
    if (status.session_id && !status.session_id.startsWith('pending:'))
      summary.append(' in session ', el('code', status.session_id));
    if (status.end_reason) summary.append(` (${status.end_reason})`);
    const table = el('table', null, { class: 'history' });
    const head = table.createTHead().insertRow();
    for (const name of ['session', 'queue', 'created', 'ended', 'reason', 'players'])
      head.append(el('th', name, { scope: 'col' }));
    const body = table.createTBody();
    for (const m of history.matches)
      body.append(
        row([
          el('code', m.session_id.slice(0, 8), { title: m.session_id }),
          m.queue || 'default',
          when(m.created_at),
          m.ended_at ? when(m.ended_at) : 'running',
          m.end_reason,
          m.players.join(', '),
        ]),
      );
    if (!history.matches.length) body.append(row(['no matches in the history']));
    const wrap = el('div', null, { class: 'scroll' });
    wrap.append(table);
    out.replaceChildren(summary, el('h3', 'history (latest 10)'), wrap);
  } catch (e) {
    out.replaceChildren(el('p', `Could not look up ${id}: ${e.message}`, { class: 'error', role: 'alert' }));
  }
}

function signedIn(session) {
  csrf = session.csrf_token;
  $('who-name').textContent = session.name;
  $('who').hidden = false;
  $('login').hidden = true;
  $('console').hidden = false;
  polls = 0;
  poll().then(schedule);
}

function signedOut(message) {
  csrf = '';
  clearTimeout(timer);
  $('who').hidden = true;
  $('console').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  $('token').focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $('token').value;
  const name = $('name').value.trim() || undefined;
  try {
    const session = await api('console/login', { method: 'POST', body: { token, name } });
    $('token').value = '';
    signedIn(session);
  } catch (e) {
    $('token').value = '';
    $('login-error').textContent = e.status === 401 ? 'That is not the operator token.' : `Could not sign in: ${e.message}`;
  }
}

async function signOut() {
  try {
    await api('console/logout', { method: 'POST' });
  } catch {
    // Signed out here either way.
  }
  signedOut('Signed out.');
}

$('login-form').addEventListener('submit', signIn);
$('sign-out').addEventListener('click', signOut);
$('player-form').addEventListener('submit', lookUp);
$('filters').addEventListener('input', () => {
  poll();
});
$('filters').addEventListener('submit', (e) => e.preventDefault());
document.addEventListener('visibilitychange', () => {
  if (!document.hidden && csrf) poll().then(schedule);
  else clearTimeout(timer);
});

api('console/session').then(signedIn, () => signedOut(''));
