// The supervisor's view: sessions (filters, paging), one session's timeline (with each
// signature's manifest) and audit log, approve (a signature) / verify a step (a signature) /
// reopen, and the SOP editor.
import { h, append, clear } from './dom.js';
import { ApiError, describe, get, getBlob, post, query } from './api.js';
import {
  ask, badge, dayRange, duration, field, fileSize, formatNumber, lockBadge, notice, pager, personName, rangeText,
  shortId, statusWord, when,
} from './ui.js';
import { mountSopEditor } from './editor.js';
import {
  MEANINGS, manifest, needsReauthentication, reauthenticationText, resumeSignature, sign, signatureBody,
  statementField,
} from './sign.js';
import { showSopStats } from './stats.js';
import { nonconformanceViews } from './nc.js';
import { webhookViews } from './webhooks.js';

const STATUSES = ['in_progress', 'paused', 'completed', 'cancelled'];

function explain(error) {
  if (needsReauthentication(error)) return reauthenticationText(error);
  if (error instanceof ApiError && error.status === 409) {
    switch (error.code) {
      case 'session-locked':
        return 'This session is approved and locked: it cannot be approved again, reopened or changed.';
      case 'wrong-state':
        return `Not possible while the session is ${statusWord(error.problem.session_status || '').toLowerCase()
        }: only a completed session can be approved, and only a completed or cancelled one reopened.`;
      case 'not-awaiting-verification':
        return 'This step is no longer waiting for verification: someone else may have verified it just now.';
      case 'active-session-exists':
        return 'The worker has another session in progress: it must be completed or cancelled '
          + 'before this one can be reopened.';
      default:
        break;
    }
  }
  return describe(error);
}

// The session list's filters, kept in the page's address so a filtered list can be
// bookmarked or sent: the API's query parameters, but for the days "from" and "to" (that day
// included; `dayRange` turns them into instants for the API).
const FILTERS = ['status', 'sop_id', 'sop_family_id', 'worker_id', 'needs_attention', 'locked',
  'from', 'to', 'limit', 'offset'];
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export const REFRESH_MS = 5000;

function filtersFromAddress() {
  const q = new URLSearchParams(location.search);
  const f = Object.fromEntries(FILTERS.map((k) => [k, q.get(k) || '']));
  f.limit = [20, 50, 100].includes(Number(f.limit)) ? Number(f.limit) : 20;
  f.offset = Math.max(0, Number(f.offset) || 0);
  return f;
}

/** The API's query for the filters: the days become instants. */
function sessionQuery(filters) {
  const { from, to, ...params } = filters;
  const { after, before } = dayRange(from, to);
  if (!params.offset) delete params.offset;
  return { ...params, started_after: after, started_before: before };
}

/**
 * The worker filter's name search: as the supervisor types, the directory's matching workers
 * are offered (a datalist); `resolve()` turns what the field holds into a worker id: a person
 * offered, a whole id, or a text that names exactly one worker. What is typed is only ever a
 * search text (the API matches it as text).
 */
function peopleSearch(input, list) {
  const offered = new Map(); // label -> id
  const label = (p) => {
    const text = `${p.name || 'No name'} (${shortId(p.id)})`;
    offered.set(text, p.id);
    return text;
  };
  const find = async (text, limit) => (await get(`/people${query({ q: text, role: 'worker', limit })}`)).items;
  let timer = null;
  input.addEventListener('input', () => {
    clearTimeout(timer);
    const text = input.value.trim();
    if (!text || offered.has(text) || UUID.test(text)) return;
    timer = setTimeout(async () => {
      try {
        const found = await find(text, 10);
        clear(list).append(...found.map((p) => h('option', { value: label(p) })));
      } catch {
        // the filter still takes a whole id, or a name on Refresh
      }
    }, 250);
  });
  return {
    label,
    async resolve() {
      const text = input.value.trim();
      if (!text) return { id: '', problem: '' };
      if (offered.has(text)) return { id: offered.get(text), problem: '' };
      if (UUID.test(text)) return { id: text.toLowerCase(), problem: '' };
      const found = await find(text, 2);
      if (found.length === 1) {
        input.value = label(found[0]);
        return { id: found[0].id, problem: '' };
      }
      return { id: '', problem: found.length ? `More than one worker's name holds "${text}": pick one from the list.`
        : `No worker's name holds "${text}".` };
    },
  };
}

export function mountSupervisor(root, {
  claims, nav, temporalUi, pendingSignature = null,
}) {
  const filters = filtersFromAddress();
  const sops = new Map(); // id -> SOP, for step titles in timelines
  let refresher = null; // the session list's timer, stopped when another view opens
  const tabs = {
    sessions: h('button', { type: 'button', onclick: () => showSessions() }, 'Sessions'),
    sops: h('button', { type: 'button', onclick: () => showSops() }, 'SOPs'),
    ncs: h('button', { type: 'button', onclick: () => ncViews.showList() }, 'Nonconformances'),
  };
  if (claims?.role === 'admin') {
    tabs.webhooks = h('button', { type: 'button', onclick: () => hooks.show() }, 'Webhooks');
  }
  clear(nav).append(...Object.values(tabs));

  function setTab(name) {
    clearInterval(refresher);
    refresher = null;
    releaseFiles();
    for (const [key, button] of Object.entries(tabs)) {
      if (key === name) button.setAttribute('aria-current', 'page');
      else button.removeAttribute('aria-current');
    }
  }

  async function sopById(id) {
    if (!sops.has(id)) sops.set(id, await get(`/sops/${id}`));
    return sops.get(id);
  }

  const people = new Map(); // id -> the directory's person (null: not in it), asked once per page
  async function person(id) {
    if (!people.has(id)) {
      try {
        people.set(id, await get(`/people/${id}`));
      } catch (error) {
        if (!(error instanceof ApiError && error.status === 404)) throw error;
        people.set(id, null);
      }
    }
    return people.get(id);
  }

  /** Names of the people `ids` (a Map id -> name or null); an id the directory cannot give stays without. */
  async function namesOf(ids) {
    const unique = [...new Set(ids.filter(Boolean))];
    const found = await Promise.all(unique.map((id) => person(id).catch(() => null)));
    return new Map(unique.map((id, i) => [id, found[i]?.name || null]));
  }

  /** All of a session's audit entries, oldest first (null when the log cannot be read). */
  async function sessionEntries(sessionId) {
    const entries = [];
    try {
      for (;;) {
        const page = await get(`/audit${query({ session_id: sessionId, limit: 100, offset: entries.length })}`);
        entries.push(...page.items);
        if (!page.items.length || entries.length >= page.total || entries.length >= 2000) return entries;
      }
    } catch {
      return null;
    }
  }

  /** Confirmed and archived SOPs, for the SOP filter (sessions exist of those only). */
  async function catalog() {
    const [confirmed, archived] = await Promise.all([
      get('/sops?status=confirmed&limit=100'), get('/sops?status=archived&limit=100')]);
    return [...confirmed.items, ...archived.items];
  }

  // ---- sessions list -----------------------------------------------------------------------

  async function showSessions() {
    setTab('sessions');
    clear(root);
    const messages = h('div');
    const tableArea = h('div');
    const updated = h('p', { class: 'hint updated' });
    const status = h('select', { name: 'status' },
      h('option', { value: '' }, 'All'),
      STATUSES.map((s) => h('option', { value: s, selected: filters.status === s }, statusWord(s))));
    const sop = h('select', { name: 'sop' }, h('option', { value: '' }, 'All SOPs'));
    const choices = h('datalist', { id: 'worker-choices' });
    const worker = h('input', {
      type: 'search', name: 'worker', autocomplete: 'off', spellcheck: 'false', list: choices.id,
      placeholder: 'Type a name',
    });
    const attention = h('input', {
      type: 'checkbox', name: 'attention', checked: filters.needs_attention === 'true', id: 'f-attention',
    });
    const approval = h('select', { name: 'locked' },
      [['', 'Any'], ['false', 'Not approved'], ['true', 'Approved and locked']]
        .map(([v, text]) => h('option', { value: v, selected: filters.locked === v }, text)));
    const from = h('input', { type: 'date', name: 'from', value: filters.from });
    const to = h('input', { type: 'date', name: 'to', value: filters.to });
    const limit = h('select', { name: 'limit' },
      [20, 50, 100].map((n) => h('option', { value: n, selected: filters.limit === n }, String(n))));
    const workerHint = 'A name, or part of one';
    const workerField = field('Worker', worker, workerHint, { hintFirst: false });
    workerField.append(choices);
    const workerSearch = peopleSearch(worker, choices);
    if (filters.worker_id) {
      person(filters.worker_id).then((p) => { worker.value = workerSearch.label(p); }).catch(() => {
        worker.value = filters.worker_id;
      });
    }

    async function apply() {
      let workerId = filters.worker_id;
      let problem = '';
      try {
        ({ id: workerId, problem } = await workerSearch.resolve());
      } catch (error) {
        problem = describe(error);
      }
      if (problem) worker.setAttribute('aria-invalid', 'true');
      else worker.removeAttribute('aria-invalid');
      workerField.querySelector('.hint').textContent = problem || workerHint;
      const [kind, value] = sop.value ? sop.value.split(':') : ['', ''];
      Object.assign(filters, {
        status: status.value,
        sop_id: kind === 'sop' ? value : '',
        sop_family_id: kind === 'family' ? value : '',
        worker_id: problem ? filters.worker_id : workerId,
        needs_attention: attention.checked ? 'true' : '',
        locked: approval.value,
        from: from.value,
        to: to.value,
        limit: Number(limit.value),
        offset: 0,
      });
      load();
    }
    for (const control of [status, sop, attention, approval, from, to, limit]) {
      control.addEventListener('change', apply);
    }
    worker.addEventListener('change', apply);

    root.append(
      h('h1', {}, 'Work sessions'),
      h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter sessions', onsubmit: (e) => { e.preventDefault(); apply(); } },
        field('Status', status),
        field('SOP', sop),
        workerField,
        field('Approval', approval),
        field('Started from', from),
        field('Started to', to, 'That day included'),
        h('div', { class: 'field check-field' }, attention, h('label', { for: 'f-attention' }, 'Needs attention only')),
        field('Per page', limit),
        h('button', { type: 'submit', class: 'secondary' }, 'Refresh')),
      messages, tableArea, updated);

    catalog().then((items) => {
      const families = new Map();
      for (const s of items) {
        if (!families.has(s.family_id)) families.set(s.family_id, []);
        families.get(s.family_id).push(s);
      }
      for (const [family, versions] of families) {
        versions.sort((a, b) => b.version - a.version);
        sop.append(h('optgroup', { label: versions[0].title },
          h('option', { value: `family:${family}`, selected: filters.sop_family_id === family },
            `${versions[0].title}, all versions`),
          versions.map((v) => h('option', { value: `sop:${v.id}`, selected: filters.sop_id === v.id },
            `${v.title} v${v.version}${v.status === 'archived' ? ' (archived)' : ''}`))));
      }
    }).catch(() => {}); // the list works without the SOP names

    let page = null;
    let shown = '';

    /** Fetch the page the filters select; redraw only if it changed (keeps the focus). */
    async function load({ quiet = false } = {}) {
      const params = Object.fromEntries(FILTERS.map((k) => [k, filters[k]]));
      const address = query({ ...params, offset: params.offset || '', limit: params.limit === 20 ? '' : params.limit });
      if (!quiet) history.replaceState(null, '', `${location.pathname}${address}${location.hash}`);
      try {
        page = await get(`/sessions${query(sessionQuery(params))}`);
        if (!quiet) notice(messages, 'info', '');
      } catch (error) {
        if (quiet) return; // the next round tries again; the list on screen stays
        notice(messages, 'error', explain(error));
        page = null;
      }
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every ${REFRESH_MS / 1000} s.`;
      const now = JSON.stringify(page);
      if (now !== shown) {
        shown = now;
        draw();
      }
    }

    function draw() {
      const focused = document.activeElement?.dataset?.key;
      clear(tableArea);
      if (!page) return;
      if (!page.total) {
        tableArea.append(h('p', { class: 'muted' }, 'No session matches.'));
        return;
      }
      tableArea.append(h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': 'Sessions' },
        h('table', { class: 'sessions' },
          h('thead', {}, h('tr', {},
            ['Started', 'SOP', 'Worker', 'Status', 'Flags'].map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}, page.items.map((s) => h('tr', {},
            h('td', {}, when(s.started_at)),
            h('td', {}, h('button', {
              type: 'button', class: 'link', onclick: () => showDetail(s.id), dataset: { key: s.id },
              'aria-label': `Open ${s.sop.title}, ${personName(s.worker_name, s.worker_id)}, ${statusWord(s.status)}`,
            }, s.sop.title), ` v${s.sop.version}`),
            h('td', { title: s.worker_id, class: 'person' }, personName(s.worker_name, s.worker_id)),
            h('td', {}, badge(s.status)),
            h('td', {}, s.needs_attention ? badge('attention', 'Needs attention') : null,
              s.awaiting_verification ? badge('verify', 'Awaiting verification') : null,
              s.locked ? lockBadge() : null)))))));
      const last = page.offset + page.items.length;
      tableArea.append(pager(page.offset + 1, last, page.total, page.offset > 0, last < page.total, (d) => {
        filters.offset = Math.max(0, filters.offset + d * filters.limit);
        load();
      }));
      if (focused) tableArea.querySelector(`[data-key="${focused}"]`)?.focus();
    }

    await load();
    refresher = setInterval(() => {
      if (document.visibilityState === 'visible') load({ quiet: true });
    }, REFRESH_MS);
  }

  // ---- one session ---------------------------------------------------------------------------

  /** One session; `message`: what just happened (ok), `problem`: what did not (an error or words). */
  async function showDetail(id, message, problem) {
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
    const entries = await sessionEntries(session.id);
    const names = await namesOf([session.worker_id, session.approved_by,
      ...session.checks.map((c) => c.checked_by), ...(entries || []).map((e) => e.actor_id)]);
    if (session.worker_name) names.set(session.worker_id, session.worker_name);
    const who = (id) => personName(names.get(id), id);

    clear(root);
    const messages = h('div', { class: 'messages' });
    const { base, namespace } = temporalUi();
    const workflowUrl = session.workflow_id
      ? `${base}/namespaces/${encodeURIComponent(namespace)}/workflows/${encodeURIComponent(session.workflow_id)}`
      : null;
    // dom.js append: a part that is not there (null) adds nothing (root.append wrote "null")
    append(root, [
      backButton(),
      h('h1', { id: 'session-title', tabindex: '-1' }, session.sop.title, ' ',
        h('span', { class: 'muted' }, `v${session.sop.version}`)),
      h('p', { class: 'meta badges' }, badge(session.status), session.locked ? lockBadge() : null,
        session.needs_attention ? badge('attention', 'Needs attention') : null,
        session.awaiting_verification ? badge('verify', 'Awaiting verification') : null),
      h('dl', { class: 'facts' },
        fact('Session', h('code', {}, session.id)),
        fact('Worker', [who(session.worker_id), ' ', h('code', { class: 'muted' }, session.worker_id)]),
        fact('Started', when(session.started_at)),
        session.current_step ? fact('Now at', `Step ${session.current_step.index + 1} of `
          + `${session.current_step.total}: ${session.current_step.title}`) : null,
        session.paused_seconds ? fact('Time paused', duration(session.paused_seconds)) : null,
        session.completed_at ? fact('Completed', when(session.completed_at)) : null,
        session.cancelled_at ? fact('Cancelled', when(session.cancelled_at)) : null,
        session.cancel_reason ? fact('Reason', session.cancel_reason) : null,
        session.approved_at ? fact('Approved', [when(session.approved_at), ' by ',
          who(session.approved_by)]) : null,
        workflowUrl ? fact('Workflow', h('a', { href: workflowUrl, target: '_blank', rel: 'noopener noreferrer' },
          'Open in Temporal UI', h('span', { class: 'visually-hidden' }, ' (opens in a new tab)'))) : null),
      messages,
      overrideActions(session, steps, messages),
      h('h2', {}, 'Timeline'),
      entries ? null : h('p', { class: 'notice notice-warn' },
        'The audit log could not be read: the timeline shows checks only, without pauses, '
        + 'resumptions or escalations.'),
      timeline(session, steps, entries || [], who),
      h('h2', {}, 'Time per step'),
      stepTimes(session, steps),
      h('h2', {}, 'Audit log')]);
    const auditArea = h('div');
    root.append(auditArea);
    if (message) notice(messages, 'ok', message);
    if (problem) notice(messages, 'error', typeof problem === 'string' ? problem : explain(problem));
    root.querySelector('#session-title').focus();
    loadAudit(session.id, auditArea, steps, who);
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
    const waiting = session.awaiting_verification;
    if (waiting) {
      const step = steps.get(waiting.step_id);
      const check = session.checks.find((c) => c.id === waiting.check_id);
      buttons.push(h('button', { type: 'button', class: 'primary', onclick: () => verify(session, steps, messages) },
        'Verify'));
      return h('div', { class: 'verify-box card' },
        h('p', {}, h('strong', {}, 'Waiting for verification: '),
          step ? `${step.task} › ${step.title}` : `step ${shortId(waiting.step_id)}`,
          ', passed ', check ? ['by ', personName(session.worker_name, check.checked_by), ' '] : '',
          when(waiting.since), '. The worker goes on once a second person verifies it.'),
        h('div', { class: 'actions' }, buttons));
    }
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

  // A signature is sent at once; when the service wants a fresh sign-in, sign.js sends the
  // person through the provider and `finishSignature` sends it back here.
  const SIGNED = {
    approved: 'Approved: the session is now locked.',
    verified: 'Verified: the worker can go on with the session.',
  };

  async function approve(session, messages) {
    const answer = await ask({
      title: 'Approve and lock this session?',
      text: `Your electronic signature, with the meaning "${MEANINGS.approved.sentence}" `
        + 'Once approved, nobody can change or reopen the session.',
      confirmLabel: 'Approve and lock',
      fields: (form) => form.append(statementField(field)),
    });
    if (!answer) return;
    signAndShow(session, signatureBody('approved', answer), messages);
  }

  async function verify(session, steps, messages) {
    const { step_id: stepId } = session.awaiting_verification;
    const step = steps.get(stepId);
    const answer = await ask({
      title: `Verify ${step ? step.title : 'this step'}?`,
      text: `Your electronic signature, with the meaning "${MEANINGS.verified.sentence}" `
        + 'The session then goes on to the next step.',
      confirmLabel: 'Verify',
      fields: (form) => form.append(statementField(field)),
    });
    if (!answer) return;
    signAndShow(session, signatureBody('verified', answer, { step_id: stepId }), messages);
  }

  async function signAndShow(session, body, messages) {
    try {
      await sign(session.id, body);
      showDetail(session.id, SIGNED[body.meaning]);
    } catch (error) {
      notice(messages, 'error', explain(error));
    }
  }

  /** Back from the provider's sign-in: the signature the supervisor started, sent once. */
  async function finishSignature(pending) {
    const { signature, error } = await resumeSignature(pending);
    if (signature) showDetail(pending.session_id, SIGNED[signature.meaning]);
    else showDetail(pending.session_id, null, error);
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

  // What each state change in the audit log is called on the timeline (checks come from the
  // session itself, with their values; a refused attempt is in the audit log only).
  const STATE_CHANGES = {
    session_start: ['start', 'Session started'],
    session_pause: ['paused', 'Paused'],
    session_resume: ['resumed', 'Resumed'],
    session_escalated: ['attention', 'Escalated: needs attention'],
    session_complete: ['completed', 'Completed before the last step'],
    session_cancel: ['cancelled', 'Cancelled'],
    session_reopen: ['reopened', 'Reopened'],
    session_approve: ['approved', 'Approved and locked'],
  };

  /** Each signature as a timeline event showing its manifest. */
  function signatureEvents(session, stepName) {
    return (session.signatures || []).map((sig) => ({
      at: sig.signed_at,
      kind: 'signed',
      title: `Signed: ${(MEANINGS[sig.meaning] || { word: sig.meaning }).word} by ${sig.signer_name}`,
      body: manifest(sig, stepName),
    }));
  }

  /** Every check and every state change of the session, oldest first, each with who and when. */
  function timeline(session, steps, entries, who) {
    const stepName = (id) => (steps.get(id) ? `${steps.get(id).task} › ${steps.get(id).title}` : `step ${shortId(id)}`);
    const by = (e) => (e.actor_role === 'system' ? 'by the service' : `by ${who(e.actor_id)}`);
    const events = [];
    for (const e of entries) {
      const known = STATE_CHANGES[e.action];
      if (!known || e.outcome !== 'accepted') continue;
      const [kind, title] = known;
      const d = e.detail || {};
      const lines = [];
      if (e.action === 'session_pause' && d.reason === 'idle') lines.push('No activity for a while: paused by itself.');
      if (e.action === 'session_escalated') {
        lines.push(`${d.failed_checks_in_a_row} failed checks in a row on ${stepName(d.step_id)}.`);
      }
      if (d.reason && e.action !== 'session_pause') lines.push(`Reason: ${d.reason}`);
      if (e.action === 'session_reopen') lines.push(d.step_id ? `To continue at ${stepName(d.step_id)}.` : 'To continue at the first step without a passed check.');
      events.push({ at: e.at, kind, title: `${title} ${by(e)}`, body: lines.map((t) => h('p', {}, t)) });
    }
    for (const c of session.checks) {
      const step = steps.get(c.step_id);
      const spec = step?.check || {};
      const unit = spec.unit ? ` ${spec.unit}` : '';
      events.push({
        at: c.checked_at,
        kind: c.result,
        title: `${stepName(c.step_id)}, by ${who(c.checked_by)}`,
        body: [
          badge(c.result),
          c.value != null ? h('span', { class: 'value' }, ` ${formatNumber(c.value)}${unit}`,
            rangeText(spec) ? h('span', { class: 'muted' }, ` (allowed ${rangeText(spec)})`) : null) : null,
          spec.prompt ? h('p', { class: 'muted' }, spec.prompt) : null,
          c.notes ? h('p', { class: 'note' }, `Note: ${c.notes}`) : null,
          c.evidence_uri ? h('p', {}, 'Evidence: ', h('code', {}, c.evidence_uri)) : null,
          c.evidence?.length ? evidenceFiles(c.evidence) : null,
        ],
      });
    }
    events.push(...signatureEvents(session, stepName));
    // A session completes by itself when its last step is checked: no entry of its own says so.
    const manual = entries.some((e) => e.action === 'session_complete' && e.outcome === 'accepted'
      && Math.abs(new Date(e.at) - new Date(session.completed_at)) < 1000);
    if (session.completed_at && !manual) {
      const unchecked = (session.unchecked_step_ids || []).map((id) => steps.get(id)?.title || shortId(id));
      events.push({
        at: session.completed_at, kind: 'completed', title: 'Completed',
        body: unchecked.length ? h('p', {}, `Not checked: ${unchecked.join(', ')}`) : null,
      });
    }
    if (!entries.length) { // the audit log could not be read: what the session itself says
      events.push({ at: session.started_at, kind: 'start', title: 'Session started' });
      if (session.paused_at) events.push({ at: session.paused_at, kind: 'paused', title: 'Paused' });
      if (session.cancelled_at) events.push({ at: session.cancelled_at, kind: 'cancelled', title: 'Cancelled' });
      if (session.approved_at) events.push({ at: session.approved_at, kind: 'approved', title: 'Approved and locked' });
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

  /**
   * A check's files: an image as a thumbnail that opens it whole, any other file (a PDF) as a
   * link that saves it; each with its name and size. GET /evidence/{id} needs the token, so
   * the bytes are fetched (api.js) and shown from an object URL.
   */
  function evidenceFiles(files) {
    return h('ul', { class: 'files', 'aria-label': 'Evidence files' }, files.map((f) => {
      const name = f.filename || `file ${shortId(f.id)}`;
      const size = h('span', { class: 'muted' }, `${name} · ${fileSize(f.bytes)}`);
      if (f.content_type.startsWith('image/')) {
        const img = h('img', { class: 'thumb', alt: `Photo: ${name}` });
        const link = h('a', {
          href: `/api/v1/evidence/${f.id}`, class: 'thumb-link',
          onclick: (event) => { event.preventDefault(); viewImage(f, name); },
        }, img, h('span', { class: 'visually-hidden' }, ' (open the whole photo)'));
        fileUrl(f.id).then((url) => { img.src = url; }, () => { img.alt = `${name}: could not be loaded`; });
        return h('li', {}, link, size);
      }
      const link = h('a', {
        href: `/api/v1/evidence/${f.id}`, class: 'file-link',
        onclick: (event) => { event.preventDefault(); saveFile(f, name, link); },
      }, `Open ${name}`, f.content_type === 'application/pdf' ? ' (PDF)' : '');
      return h('li', {}, link, size);
    }));
  }

  // object URLs of the files fetched for this page, by id (a file never changes); each view
  // that opens (setTab) lets the last one's go, or a day of reviews kept every photo seen
  const fileUrls = new Map();
  function fileUrl(id) {
    if (!fileUrls.has(id)) {
      const loading = getBlob(`/evidence/${id}`).then((blob) => URL.createObjectURL(blob));
      loading.catch(() => fileUrls.delete(id));
      fileUrls.set(id, loading);
    }
    return fileUrls.get(id);
  }
  function releaseFiles() {
    for (const loading of fileUrls.values()) loading.then(URL.revokeObjectURL, () => {});
    fileUrls.clear();
  }

  async function viewImage(f, name) {
    const dialog = h('dialog', { class: 'dialog viewer', 'aria-label': name });
    const img = h('img', { alt: `Photo: ${name}` });
    const close = h('button', { type: 'button', class: 'secondary', onclick: () => dialog.close() }, 'Close');
    dialog.append(h('p', {}, `${name} · ${fileSize(f.bytes)}`), img, h('div', { class: 'actions' }, close));
    dialog.addEventListener('close', () => dialog.remove());
    document.body.append(dialog);
    dialog.showModal();
    close.focus();
    try {
      img.src = await fileUrl(f.id);
    } catch (error) {
      img.replaceWith(h('p', { class: 'notice notice-error' }, explain(error)));
    }
  }

  async function saveFile(f, name, link) {
    try {
      const a = h('a', { href: await fileUrl(f.id), download: name, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
    } catch (error) {
      link.after(h('span', { class: 'notice notice-error' }, explain(error)));
    }
  }

  /** Time on each step reached (paused time left out), checks it took, when it was passed. */
  function stepTimes(session, steps) {
    const times = session.step_times || [];
    if (!times.length) return h('p', { class: 'muted' }, 'No step times recorded for this session.');
    const open = session.status === 'in_progress' || session.status === 'paused';
    return h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': 'Time per step' },
      h('table', { class: 'step-times' },
        h('thead', {}, h('tr', {}, ['Step', 'Time on it', 'Checks', 'Passed'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, times.map((t) => {
          const step = steps.get(t.step_id);
          const current = open && t.step_id === session.current_step_id;
          return h('tr', { class: current ? 'current' : null },
            h('th', { scope: 'row' }, step ? `${step.task} › ${step.title}` : `Step ${shortId(t.step_id)}`),
            h('td', {}, duration(t.active_seconds), current ? ' so far' : ''),
            h('td', {}, String(t.attempts)),
            h('td', {}, t.passed_at ? when(t.passed_at, { seconds: true }) : (current ? 'current step' : 'not passed')));
        }))));
  }

  async function loadAudit(sessionId, area, steps, who, offset = 0) {
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
        h('td', { title: e.actor_id || null }, e.actor_role || '', e.actor_id ? ` ${who(e.actor_id)}` : ''),
        h('td', {}, e.action.replace(/_/g, ' ')),
        h('td', {}, badge(e.outcome === 'accepted' ? 'passed' : 'failed', e.outcome)),
        h('td', { class: 'detail', title: e.detail ? JSON.stringify(e.detail) : null },
          detail.length > 200 ? `${detail.slice(0, 197)}…` : detail)));
    }
    if (!page.total) area.append(h('p', { class: 'muted' }, 'No audit entries.'));
    const next = page.offset + page.items.length;
    if (next < page.total) {
      area.append(h('button', { type: 'button', class: 'secondary small more', onclick: () => loadAudit(sessionId, area, steps, who, next) },
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
    mountSopEditor(root, {
      onChange: (sop) => sops.set(sop.id, sop),
      onStats: (sop, backToList) => showSopStats(root, sop, {
        back: () => h('button', { type: 'button', class: 'secondary small back', onclick: () => backToList() },
          h('span', { 'aria-hidden': 'true' }, '← '), 'All SOPs'),
      }),
    });
  }

  const ncViews = nonconformanceViews({
    root, setTab, showSession: (id) => showDetail(id), sopById, namesOf,
  });
  const hooks = webhookViews({ root, setTab });

  if (pendingSignature?.nc_id) ncViews.finishClose(pendingSignature, resumeSignature);
  else if (pendingSignature) finishSignature(pendingSignature);
  else showSessions();
}
