// The supervisor's view: sessions (filters, paging), one session's timeline and audit log,
// approve / reopen, and the SOP editor.
import { h, clear } from './dom.js';
import { ApiError, describe, get, post, query } from './api.js';
import {
  ask, badge, duration, field, formatNumber, lockBadge, notice, pager, rangeText, shortId, statusWord,
  when,
} from './ui.js';
import { mountSopEditor } from './editor.js';

const STATUSES = ['in_progress', 'paused', 'completed', 'cancelled'];

function explain(error) {
  if (error instanceof ApiError && error.status === 409) {
    switch (error.code) {
      case 'session-locked':
        return 'This session is approved and locked: it cannot be approved again, reopened or changed.';
      case 'wrong-state':
        return `Not possible while the session is ${statusWord(error.problem.session_status || '').toLowerCase()
        }: only a completed session can be approved, and only a completed or cancelled one reopened.`;
      case 'active-session-exists':
        return 'The worker has another session in progress: it must be completed or cancelled '
          + 'before this one can be reopened.';
      default:
        break;
    }
  }
  return describe(error);
}

export function mountSupervisor(root, { nav, temporalUi }) {
  const filters = { status: '', sop: '', worker: '', attention: false, offset: 0, limit: 20 };
  const sops = new Map(); // id -> SOP, for step titles in timelines
  const tabs = {
    sessions: h('button', { type: 'button', onclick: () => showSessions() }, 'Sessions'),
    sops: h('button', { type: 'button', onclick: () => showSops() }, 'SOPs'),
  };
  clear(nav).append(tabs.sessions, tabs.sops);

  function setTab(name) {
    for (const [key, button] of Object.entries(tabs)) {
      if (key === name) button.setAttribute('aria-current', 'page');
      else button.removeAttribute('aria-current');
    }
  }

  async function sopById(id) {
    if (!sops.has(id)) sops.set(id, await get(`/sops/${id}`));
    return sops.get(id);
  }

  // ---- sessions list -----------------------------------------------------------------------

  async function showSessions() {
    setTab('sessions');
    clear(root);
    const messages = h('div');
    const tableArea = h('div');
    const status = h('select', { name: 'status' },
      h('option', { value: '' }, 'All'),
      STATUSES.map((s) => h('option', { value: s, selected: filters.status === s }, statusWord(s))));
    const sop = h('input', { type: 'search', name: 'sop', value: filters.sop, autocomplete: 'off' });
    const worker = h('input', { type: 'search', name: 'worker', value: filters.worker, autocomplete: 'off' });
    const attention = h('input', { type: 'checkbox', name: 'attention', checked: filters.attention, id: 'f-attention' });
    const limit = h('select', { name: 'limit' },
      [20, 50, 100].map((n) => h('option', { value: n, selected: filters.limit === n }, String(n))));
    status.addEventListener('change', () => { filters.status = status.value; filters.offset = 0; load(); });
    limit.addEventListener('change', () => { filters.limit = Number(limit.value); filters.offset = 0; load(); });
    sop.addEventListener('input', () => { filters.sop = sop.value; draw(); });
    worker.addEventListener('input', () => { filters.worker = worker.value; draw(); });
    attention.addEventListener('change', () => { filters.attention = attention.checked; draw(); });

    root.append(
      h('h1', {}, 'Work sessions'),
      h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter sessions', onsubmit: (e) => e.preventDefault() },
        field('Status', status),
        field('SOP title', sop),
        field('Worker ID', worker),
        h('div', { class: 'field check-field' }, attention, h('label', { for: 'f-attention' }, 'Needs attention only')),
        field('Per page', limit),
        h('button', { type: 'button', class: 'secondary', onclick: () => load() }, 'Refresh')),
      messages, tableArea);

    let page = null;

    async function load() {
      try {
        page = await get(`/sessions${query({ status: filters.status, limit: filters.limit, offset: filters.offset })}`);
        notice(messages, 'info', '');
      } catch (error) {
        notice(messages, 'error', explain(error));
        page = null;
      }
      draw();
    }

    function draw() {
      clear(tableArea);
      if (!page) return;
      // The API filters by status only; SOP, worker and "needs attention" are applied here,
      // to the page that was fetched (see the count under the table).
      const sopText = filters.sop.trim().toLowerCase();
      const workerText = filters.worker.trim().toLowerCase();
      const rows = page.items.filter((s) => (!sopText || s.sop.title.toLowerCase().includes(sopText))
        && (!workerText || s.worker_id.toLowerCase().startsWith(workerText))
        && (!filters.attention || s.needs_attention));
      const filtered = rows.length !== page.items.length;
      if (!page.total) {
        tableArea.append(h('p', { class: 'muted' }, 'No sessions.'));
        return;
      }
      tableArea.append(h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': 'Sessions' },
        h('table', { class: 'sessions' },
          h('thead', {}, h('tr', {},
            ['Started', 'SOP', 'Worker', 'Status', 'Flags'].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}, rows.map((s) => h('tr', {},
            h('td', {}, when(s.started_at)),
            h('td', {}, h('button', {
              type: 'button', class: 'link', onclick: () => showDetail(s.id),
              'aria-label': `Open ${s.sop.title}, worker ${shortId(s.worker_id)}, ${statusWord(s.status)}`,
            }, s.sop.title), ` v${s.sop.version}`),
            h('td', { title: s.worker_id }, h('code', {}, shortId(s.worker_id))),
            h('td', {}, badge(s.status)),
            h('td', {}, s.needs_attention ? badge('attention', 'Needs attention') : null,
              s.locked ? lockBadge() : null)))))));
      if (!rows.length) tableArea.append(h('p', { class: 'muted' }, 'No session on this page matches the filters.'));
      const last = page.offset + page.items.length;
      tableArea.append(pager(page.offset + 1, last, page.total, page.offset > 0, last < page.total, (d) => {
        filters.offset = Math.max(0, filters.offset + d * filters.limit);
        load();
      }));
      if (filtered) {
        tableArea.append(h('p', { class: 'hint' },
          `${rows.length} of the ${page.items.length} sessions on this page match the SOP, worker `
          + 'and attention filters.'));
      }
    }

    await load();
  }

  // ---- one session ---------------------------------------------------------------------------

  async function showDetail(id, message) {
    setTab('sessions');
    let session;
    let sop = null;
    try {
      session = await get(`/sessions/${id}`);
    } catch (error) {
      clear(root).append(backButton(), h('div'));
      notice(root.lastChild, 'error', explain(error));
      return;
    }
    try {
      sop = await sopById(session.sop.id);
    } catch {
      sop = null; // the timeline then shows step ids
    }
    const steps = new Map();
    (sop?.tasks || []).forEach((t) => t.steps.forEach((s) => steps.set(s.id, { ...s, task: t.title })));

    clear(root);
    const messages = h('div', { class: 'messages' });
    const { base, namespace } = temporalUi();
    const workflowUrl = session.workflow_id
      ? `${base}/namespaces/${encodeURIComponent(namespace)}/workflows/${encodeURIComponent(session.workflow_id)}`
      : null;
    root.append(
      backButton(),
      h('h1', { id: 'session-title', tabindex: '-1' }, session.sop.title, ' ',
        h('span', { class: 'muted' }, `v${session.sop.version}`)),
      h('p', { class: 'meta badges' }, badge(session.status), session.locked ? lockBadge() : null,
        session.needs_attention ? badge('attention', 'Needs attention') : null),
      h('dl', { class: 'facts' },
        fact('Session', h('code', {}, session.id)),
        fact('Worker', h('code', {}, session.worker_id)),
        fact('Started', when(session.started_at)),
        session.current_step ? fact('Now at', `Step ${session.current_step.index + 1} of `
          + `${session.current_step.total}: ${session.current_step.title}`) : null,
        session.paused_seconds ? fact('Time paused', duration(session.paused_seconds)) : null,
        session.completed_at ? fact('Completed', when(session.completed_at)) : null,
        session.cancelled_at ? fact('Cancelled', when(session.cancelled_at)) : null,
        session.cancel_reason ? fact('Reason', session.cancel_reason) : null,
        session.approved_at ? fact('Approved', [when(session.approved_at), ' by ',
          h('code', {}, shortId(session.approved_by))]) : null,
        workflowUrl ? fact('Workflow', h('a', { href: workflowUrl, target: '_blank', rel: 'noopener noreferrer' },
          'Open in Temporal UI', h('span', { class: 'visually-hidden' }, ' (opens in a new tab)'))) : null),
      messages,
      overrideActions(session, steps, messages),
      h('h2', {}, 'Timeline'),
      timeline(session, steps),
      h('h2', {}, 'Audit log'));
    const auditArea = h('div');
    root.append(auditArea);
    if (message) notice(messages, 'ok', message);
    root.querySelector('#session-title').focus();
    loadAudit(session.id, auditArea, steps);
  }

  function backButton() {
    return h('button', { type: 'button', class: 'secondary small back', onclick: () => showSessions() },
      h('span', { 'aria-hidden': 'true' }, '← '), 'All sessions');
  }

  function fact(term, value) {
    return h('div', {}, h('dt', {}, term), h('dd', {}, value));
  }

  function overrideActions(session, steps, messages) {
    if (session.locked) {
      return h('p', { class: 'notice notice-locked' },
        'This session is approved and locked: it can no longer be changed or reopened.');
    }
    const buttons = [];
    if (session.status === 'completed') {
      buttons.push(h('button', { type: 'button', class: 'primary', onclick: () => approve(session, messages) },
        'Approve and lock'));
    }
    if (session.status === 'completed' || session.status === 'cancelled') {
      buttons.push(h('button', { type: 'button', class: 'secondary', onclick: () => reopen(session, steps, messages) },
        'Reopen'));
    }
    if (!buttons.length) {
      return h('p', { class: 'muted' }, 'The session is still running: it can be approved once it is completed.');
    }
    return h('div', { class: 'actions' }, buttons);
  }

  async function approve(session, messages) {
    const ok = await ask({
      title: 'Approve and lock this session?',
      text: 'Once approved, nobody can change or reopen it.',
      confirmLabel: 'Approve and lock',
    });
    if (!ok) return;
    try {
      await post(`/sessions/${session.id}/approve`);
      showDetail(session.id, 'Approved: the session is now locked.');
    } catch (error) {
      notice(messages, 'error', explain(error));
    }
  }

  async function reopen(session, steps, messages) {
    const answer = await ask({
      title: 'Reopen this session?',
      text: 'The worker continues from the step you choose. Say why, for the record.',
      confirmLabel: 'Reopen',
      fields: (form) => {
        form.append(field('Reason', h('textarea', { name: 'reason', rows: 3, required: true, maxlength: 500 })));
        form.append(field('Continue at', h('select', { name: 'step_id' },
          h('option', { value: '' }, 'The first step without a passed check'),
          [...steps.values()].map((s) => h('option', { value: s.id }, `${s.task} › ${s.title}`)))));
      },
    });
    if (!answer) return;
    const body = { reason: answer.reason.trim() };
    if (answer.step_id) body.step_id = answer.step_id;
    try {
      await post(`/sessions/${session.id}/reopen`, body);
      showDetail(session.id, 'Reopened: the worker can continue the session.');
    } catch (error) {
      const other = error instanceof ApiError && error.problem.existing_session_id;
      notice(messages, 'error', explain(error), other ? [h('button', {
        type: 'button', class: 'secondary', onclick: () => showDetail(other),
      }, 'Open that session')] : []);
    }
  }

  function timeline(session, steps) {
    const events = [{ at: session.started_at, kind: 'start', title: 'Session started' }];
    for (const c of session.checks) {
      const step = steps.get(c.step_id);
      const spec = step?.check || {};
      const unit = spec.unit ? ` ${spec.unit}` : '';
      events.push({
        at: c.checked_at,
        kind: c.result,
        title: step ? `${step.task} › ${step.title}` : `Step ${shortId(c.step_id)}`,
        body: [
          badge(c.result),
          c.value != null ? h('span', { class: 'value' }, ` ${formatNumber(c.value)}${unit}`,
            rangeText(spec) ? h('span', { class: 'muted' }, ` (allowed ${rangeText(spec)})`) : null) : null,
          spec.prompt ? h('p', { class: 'muted' }, spec.prompt) : null,
          c.notes ? h('p', { class: 'note' }, `Note: ${c.notes}`) : null,
          c.evidence_uri ? h('p', {}, 'Evidence: ', h('code', {}, c.evidence_uri)) : null,
        ],
      });
    }
    if (session.paused_at) events.push({ at: session.paused_at, kind: 'paused', title: 'Paused' });
    if (session.completed_at) {
      const unchecked = (session.unchecked_step_ids || []).map((id) => steps.get(id)?.title || shortId(id));
      events.push({
        at: session.completed_at, kind: 'completed', title: 'Completed',
        body: unchecked.length ? h('p', {}, `Not checked: ${unchecked.join(', ')}`) : null,
      });
    }
    if (session.cancelled_at) {
      events.push({ at: session.cancelled_at, kind: 'cancelled', title: 'Cancelled',
        body: session.cancel_reason ? h('p', {}, `Reason: ${session.cancel_reason}`) : null });
    }
    if (session.approved_at) {
      events.push({ at: session.approved_at, kind: 'approved', title: 'Approved and locked',
        body: h('p', { class: 'muted' }, `by supervisor ${shortId(session.approved_by)}`) });
    }
    events.sort((a, b) => new Date(a.at) - new Date(b.at));
    if (session.current_step && (session.status === 'in_progress' || session.status === 'paused')) {
      events.push({ kind: 'now', title: `Now: step ${session.current_step.index + 1} of `
        + `${session.current_step.total}, ${session.current_step.title}` });
    }
    return h('ol', { class: 'timeline' }, events.map((e) => h('li', { class: `event event-${e.kind}` },
      h('div', { class: 'event-time' }, e.at ? when(e.at, { seconds: true }) : ''),
      h('div', { class: 'event-body' }, h('p', { class: 'event-title' }, e.title), e.body || null))));
  }

  async function loadAudit(sessionId, area, steps, offset = 0) {
    let page;
    try {
      page = await get(`/audit${query({ session_id: sessionId, limit: 100, offset })}`);
    } catch (error) {
      notice(area, 'error', explain(error));
      return;
    }
    if (!offset) {
      clear(area).append(h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': 'Audit log' },
        h('table', { class: 'audit' },
          h('thead', {}, h('tr', {}, ['At', 'Actor', 'Action', 'Outcome', 'Detail'].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody'))));
    }
    area.querySelector('.more')?.remove();
    const tbody = area.querySelector('tbody');
    for (const e of page.items) {
      const detail = auditDetail(e.detail, steps);
      tbody.append(h('tr', {},
        h('td', {}, when(e.at, { seconds: true })),
        h('td', {}, e.actor_role || '', ' ', e.actor_id ? h('code', { title: e.actor_id }, shortId(e.actor_id)) : ''),
        h('td', {}, e.action.replace(/_/g, ' ')),
        h('td', {}, badge(e.outcome === 'accepted' ? 'passed' : 'failed', e.outcome)),
        h('td', { class: 'detail', title: e.detail ? JSON.stringify(e.detail) : null },
          detail.length > 200 ? `${detail.slice(0, 197)}…` : detail)));
    }
    if (!page.total) area.append(h('p', { class: 'muted' }, 'No audit entries.'));
    const next = page.offset + page.items.length;
    if (next < page.total) {
      area.append(h('button', { type: 'button', class: 'secondary small more', onclick: () => loadAudit(sessionId, area, steps, next) },
        `Show more (${page.total - next} left)`));
    }
  }

  /** "step: Measure residual voltage · result: passed · value: 0.9" from an entry's detail. */
  function auditDetail(detail, steps) {
    if (!detail) return '';
    return Object.entries(detail).filter(([, v]) => v !== null && v !== undefined && v !== '')
      .map(([key, v]) => {
        const name = key.replace(/_/g, ' ');
        if (key === 'step_id' && steps.get(v)) return `step: ${steps.get(v).title}`;
        if (typeof v === 'string' && /^[0-9a-f]{8}-[0-9a-f-]{27}$/i.test(v)) return `${name}: ${shortId(v)}`;
        if (typeof v === 'object') return `${name}: ${JSON.stringify(v)}`;
        return `${name}: ${v}`;
      }).join(' · ');
  }

  // ---- SOPs ---------------------------------------------------------------------------------

  function showSops() {
    setTab('sops');
    clear(root);
    mountSopEditor(root, { onChange: (sop) => sops.set(sop.id, sop) });
  }

  showSessions();
}
