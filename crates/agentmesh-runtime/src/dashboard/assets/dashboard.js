// The agentmesh dashboard: polls the node's JSON endpoints once a second
// (one round of requests at a time, paused while the tab is hidden) and
// redraws the cluster, the task list and the selected task's DAG.
//
// Every string from the node may come from a client (task names, inputs,
// outputs, errors): it is only ever set as text (textContent, text nodes,
// attribute values), never parsed as markup.
'use strict';

(() => {
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const POLL_MS = 1000;
  const TOKEN_KEY = 'agentmesh.dashboard.token';

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    selected: null, // task id
    revision: null, // revision of the selected task's last drawn record
    task: null, // the selected task's last record
    subtask: null, // selected subtask id
    page: '', // page token of the task page shown
    pages: [], // tokens of the pages before it
    next: null,
    timer: null,
    busy: false,
    again: false,
    waitingForToken: false,
  };

  const $ = (id) => document.getElementById(id);

  /** An element with attributes and children (strings become text nodes). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === 'string' || typeof child === 'number' ? document.createTextNode(String(child)) : child);
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  class NeedToken extends Error {}

  async function api(path) {
    const headers = state.token ? { Authorization: 'Bearer ' + state.token } : {};
    const response = await fetch(path, { headers, cache: 'no-store' });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 401) throw new NeedToken((body && body.error) || 'a token is required');
    if (!response.ok) throw new Error((body && body.error) || `${path}: HTTP ${response.status}`);
    return body;
  }

  // --- formatting -----------------------------------------------------------

  function ago(ms) {
    if (!ms) return '';
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return `${s}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m ago`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
    return new Date(ms).toISOString().slice(0, 16).replace('T', ' ');
  }

  function duration(from, to) {
    if (!from) return '';
    const ms = (to || Date.now()) - from;
    if (ms < 1000) return `${ms} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    return `${Math.floor(ms / 60000)}m ${Math.round((ms % 60000) / 1000)}s`;
  }

  function clock(ms) {
    return ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 23) : '';
  }

  function badge(status) {
    return el('span', { class: `badge ${status}`, 'data-status': status }, status);
  }

  // --- cluster --------------------------------------------------------------

  function renderCluster(cluster) {
    const summary = $('summary');
    summary.replaceChildren(
      el('span', {}, `${cluster.agents.length + cluster.agents_omitted} agents`),
      el('span', {}, 'leader ', el('b', {}, cluster.leader || 'none')),
      cluster.term ? el('span', {}, `term ${cluster.term}`) : null,
      el('span', {}, 'this node ', el('b', {}, cluster.node), cluster.leading ? ' (leading)' : ' (standby)'),
      el('span', {}, cluster.tokens ? 'tokens required' : 'open (no tokens)'),
    );
    const rows = cluster.agents.map((a) => {
      const name = el('td', { class: 'name' }, a.id);
      if (a.leader) name.append(' ', el('span', { class: 'tag leader' }, 'leader'));
      if (a.faults.length) name.append(' ', el('span', { class: 'tag faulty', title: a.faults.join(', ') }, 'faulty'));
      if (a.insecure) name.append(' ', el('span', { class: 'tag insecure' }, 'insecure'));
      const load = el('td', {});
      if (a.max_concurrency) {
        load.append(el('meter', { min: 0, max: a.max_concurrency, value: a.load, title: `${a.load} in flight of ${a.max_concurrency}` }), ` ${a.load}/${a.max_concurrency}`);
      }
      const reputation = el('td', {});
      if (a.reputation !== null && a.reputation !== undefined) {
        reputation.append(el('meter', { min: 0, max: 1, low: 0.5, high: 0.8, optimum: 1, value: a.reputation }), ` ${a.reputation.toFixed(2)}`);
      }
      return el('tr', { 'data-agent-id': a.id },
        name,
        el('td', {}, a.level ? `${a.role} (${a.level})` : a.role),
        el('td', { class: 'caps' }, a.capabilities.join(', ')),
        load,
        el('td', {}, a.role === 'coordinator' ? '' : `${a.succeeded} / ${a.failed}`),
        el('td', {}, a.breaker ? el('span', { class: `tag breaker-${a.breaker.replace(/[^a-z-]/g, '')}` }, a.breaker) : ''),
        reputation,
        el('td', { class: 'muted' }, a.endpoint),
      );
    });
    if (cluster.agents_omitted) {
      rows.push(el('tr', {}, el('td', { colspan: 8, class: 'muted' }, `and ${cluster.agents_omitted} more`)));
    }
    $('agents').tBodies[0].replaceChildren(...rows);
  }

  // --- tasks ----------------------------------------------------------------

  function listQuery() {
    const params = new URLSearchParams();
    const status = $('filter-status').value;
    const pattern = $('filter-pattern').value;
    const name = $('filter-name').value;
    if (status) params.set('status', status);
    if (pattern) params.set('pattern', pattern);
    if (name) params.set('name_prefix', name);
    if (state.page) params.set('page_token', state.page);
    return params.toString();
  }

  function renderTasks(list) {
    state.next = list.next_page_token || null;
    $('next-page').hidden = !state.next;
    $('first-page').hidden = !state.page;
    $('tasks-empty').hidden = list.tasks.length > 0;
    const rows = list.tasks.map((t) => {
      const row = el('tr', { 'data-task-id': t.id, 'data-status': t.status, class: t.id === state.selected ? 'selected' : null },
        el('td', {}, badge(t.status)),
        el('td', { class: 'name' }, t.name),
        el('td', {}, t.pattern),
        el('td', {}, `${t.completed}/${t.subtasks}`),
        el('td', {}, t.owner || ''),
        el('td', { title: clock(t.created_ms) }, ago(t.created_ms)),
        el('td', { class: 'mono muted' }, t.id),
      );
      if (t.error) row.title = t.error;
      row.addEventListener('click', () => select(t.id));
      return row;
    });
    $('tasks').tBodies[0].replaceChildren(...rows);
  }

  function select(id) {
    if (state.selected !== id) {
      state.selected = id;
      state.revision = null;
      state.task = null;
      state.subtask = null;
      history.replaceState(null, '', '#task=' + encodeURIComponent(id));
      for (const row of $('tasks').tBodies[0].rows) {
        row.classList.toggle('selected', row.dataset.taskId === id);
      }
    }
    poll();
  }

  async function refreshTask() {
    const id = state.selected;
    const revision = state.revision === null ? '' : `?revision=${state.revision}`;
    const task = await api(`/api/tasks/${encodeURIComponent(id)}${revision}`);
    if (id !== state.selected) return;
    if (task.unchanged) {
      // Running durations still move.
      if (state.task && state.task.status === 'running') renderTask(state.task);
      return;
    }
    state.task = task;
    state.revision = task.revision;
    renderTask(task);
  }

  function renderTask(task) {
    $('task-section').hidden = false;
    $('task-name').textContent = task.name;
    const status = $('task-status');
    status.textContent = task.status;
    status.className = `badge ${task.status}`;
    status.dataset.status = task.status;
    const ended = ['completed', 'failed', 'cancelled'].includes(task.status);
    $('task-meta').textContent = [
      task.pattern,
      task.owner ? `owner ${task.owner}` : null,
      `created ${clock(task.created_ms)}`,
      ended ? `took ${duration(task.created_ms, task.updated_ms)}` : `running for ${duration(task.created_ms)}`,
      `revision ${task.revision}`,
      task.id,
    ].filter(Boolean).join(' · ');
    $('task-error').textContent = task.error || '';
    drawDag(task.dag);
    const omitted = $('dag-omitted');
    omitted.hidden = !task.dag.omitted;
    omitted.textContent = task.dag.omitted ? `${task.dag.omitted} more subtasks are not drawn.` : '';
    renderSubtask();
  }

  // --- the DAG --------------------------------------------------------------

  function drawDag(dag) {
    const root = $('dag');
    const w = dag.node_width;
    const h = dag.node_height;
    root.setAttribute('viewBox', `0 0 ${Math.max(dag.width, 1)} ${Math.max(dag.height, 1)}`);
    root.setAttribute('width', dag.width);
    root.setAttribute('height', dag.height);
    const defs = svg('defs');
    const marker = svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
    marker.append(svg('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrow' }));
    defs.append(marker);
    const edges = svg('g', { class: 'edges' });
    for (const [from, to] of dag.edges) {
      const a = dag.nodes[from];
      const b = dag.nodes[to];
      const x1 = a.x + w;
      const y1 = a.y + h / 2;
      const x2 = b.x;
      const y2 = b.y + h / 2;
      const mid = (x1 + x2) / 2;
      edges.append(svg('path', {
        class: `edge ${a.status}`,
        d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`,
        'marker-end': 'url(#arrow)',
        'data-from': a.id,
        'data-to': b.id,
      }));
    }
    const nodes = svg('g', { class: 'nodes' });
    for (const n of dag.nodes) {
      const g = svg('g', {
        class: `node ${n.status}${n.id === state.subtask ? ' selected' : ''}`,
        'data-id': n.id,
        'data-status': n.status,
        transform: `translate(${n.x} ${n.y})`,
        tabindex: 0,
      });
      g.append(svg('title', {}, `${n.id}: ${n.status}${n.error ? ' — ' + n.error : ''}`));
      g.append(svg('rect', { width: w, height: h, rx: 8, ry: 8 }));
      g.append(svg('text', { x: 10, y: 18, class: 'id' }, fit(n.id, 20)));
      g.append(svg('text', { x: 10, y: 33, class: 'detail' }, fit(n.worker ? `${n.capability} @ ${n.worker}` : n.capability, 26)));
      const timing = n.started_ms ? duration(n.started_ms, n.finished_ms) : '';
      const attempts = n.attempts > 1 ? ` · try ${n.attempts}` : '';
      const agreed = typeof n.agreement === 'number' ? ` · agreed ${Math.round(n.agreement * 100)}%` : '';
      g.append(svg('text', { x: 10, y: 46, class: 'detail' }, fit(`${n.status}${attempts}${agreed}${timing ? ' · ' + timing : ''}`, 26)));
      g.addEventListener('click', () => {
        state.subtask = n.id;
        for (const other of nodes.children) other.classList.toggle('selected', other.dataset.id === n.id);
        renderSubtask();
      });
      nodes.append(g);
    }
    root.replaceChildren(defs, edges, nodes);
  }

  function fit(text, max) {
    const chars = Array.from(text || '');
    return chars.length > max ? chars.slice(0, max - 1).join('') + '…' : chars.join('');
  }

  function renderSubtask() {
    const box = $('subtask');
    const task = state.task;
    const n = task && task.dag.nodes.find((x) => x.id === state.subtask);
    box.hidden = !n;
    if (!n) return;
    $('subtask-id').textContent = n.id;
    const status = $('subtask-status');
    status.textContent = n.status;
    status.className = `badge ${n.status}`;
    const fields = [
      ['capability', n.capability],
      ['worker', n.worker],
      ['attempts', n.attempts ? `${n.attempts}${n.restarts ? ` (${n.restarts} restarted by a new leader)` : ''}` : null],
      ['tried', n.tried.length ? n.tried.join(' → ') : null],
      ['term', n.term || null],
      ['started', clock(n.started_ms)],
      ['finished', clock(n.finished_ms)],
      ['took', n.started_ms ? duration(n.started_ms, n.finished_ms) : null],
      ['depends on', n.depends_on.length ? n.depends_on.join(', ') : null],
      ['input', n.input, true],
      ['output', n.output, true],
      ['error', n.error, true],
      ['consensus', n.consensus, true],
    ];
    const items = [];
    for (const [name, value, block] of fields) {
      if (value === null || value === undefined || value === '') continue;
      items.push(el('dt', {}, name), el('dd', {}, block ? el('pre', {}, String(value)) : String(value)));
    }
    $('subtask-fields').replaceChildren(...items);
  }

  // --- polling --------------------------------------------------------------

  async function poll() {
    if (state.busy) {
      state.again = true;
      return;
    }
    clearTimeout(state.timer);
    state.busy = true;
    try {
      if (!document.hidden && !state.waitingForToken) {
        const [cluster, tasks] = await Promise.all([api('/api/cluster'), api('/api/tasks?' + listQuery())]);
        renderCluster(cluster);
        renderTasks(tasks);
        if (state.selected) await refreshTask();
        $('main').hidden = false;
        $('api-error').textContent = '';
        $('live').classList.remove('stale');
      }
    } catch (error) {
      if (error instanceof NeedToken) {
        askForToken(state.token ? error.message : '');
      } else {
        $('api-error').textContent = error.message;
        $('live').classList.add('stale');
      }
    } finally {
      state.busy = false;
    }
    if (state.again) {
      state.again = false;
      poll();
    } else if (!state.waitingForToken) {
      state.timer = setTimeout(poll, POLL_MS);
    }
  }

  function askForToken(message) {
    state.waitingForToken = true;
    $('main').hidden = true;
    $('summary').textContent = 'sign in';
    $('token-form').hidden = false;
    $('token-error').textContent = message;
    $('token').focus();
  }

  function start() {
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      state.token = $('token').value.trim();
      sessionStorage.setItem(TOKEN_KEY, state.token);
      $('token').value = '';
      $('token-form').hidden = true;
      state.waitingForToken = false;
      poll();
    });
    const refilter = () => {
      state.page = '';
      state.pages = [];
      poll();
    };
    $('filter-status').addEventListener('change', refilter);
    $('filter-pattern').addEventListener('change', refilter);
    $('filter-name').addEventListener('input', refilter);
    $('filters').addEventListener('submit', (event) => event.preventDefault());
    $('next-page').addEventListener('click', () => {
      if (!state.next) return;
      state.pages.push(state.page);
      state.page = state.next;
      poll();
    });
    $('first-page').addEventListener('click', refilter);
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) poll();
    });
    const wanted = /^#task=(.+)$/.exec(location.hash);
    if (wanted) state.selected = decodeURIComponent(wanted[1]);
    poll();
  }

  start();
})();
