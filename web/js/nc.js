// Nonconformances in the supervisor's view (CONTRACT.md, "Nonconformances"): the list (open
// first, overdue first among them), and one NC's page: its fields, its timeline (its own audit
// chain, nc:<id>), the contain form while it is open, the close form (an `approved`
// signature, sign.js) while it is contained.
import { h, append, clear } from './dom.js';
import { ApiError, describe, get, post, query } from './api.js';
import {
  badge, field, notice, personName, shortId, when,
} from './ui.js';
import {
  MEANINGS, closeNonconformance, manifest, needsReauthentication, reauthenticationText,
  statementField,
} from './sign.js';

const STATUS = { open: 'Open', contained: 'Contained', closed: 'Closed' };
const SEVERITY = { minor: 'Minor', major: 'Major', critical: 'Critical' };
export const DISPOSITIONS = {
  use_as_is: 'Use as is', rework: 'Rework', scrap: 'Scrap', return: 'Return to supplier', other: 'Other',
};
const ACTIONS = {
  nonconformance_opened: 'Opened',
  nonconformance_contained: 'Contained',
  nonconformance_overdue: 'Overdue',
  nonconformance_closed: 'Closed',
  signed: 'Signed',
};

const statusBadge = (nc) => [badge(`nc-${nc.status}`, STATUS[nc.status] || nc.status),
  nc.overdue ? [' ', badge('attention', 'Overdue')] : null];
const severityBadge = (nc) => badge(`sev-${nc.severity}`, SEVERITY[nc.severity] || nc.severity);

function explain(error) {
  if (needsReauthentication(error)) return reauthenticationText(error);
  if (error instanceof ApiError && error.status === 409) {
    return 'Someone else changed this nonconformance just now: here it is as it stands.';
  }
  return describe(error);
}

/** Open ones first, overdue first among them, then by the nearer deadline; closed last, newest first. */
export function ordered(items) {
  const rank = { open: 0, contained: 1, closed: 2 };
  const due = (nc) => new Date(nc.status === 'open' ? nc.containment_due : nc.close_due).getTime();
  return [...items].sort((a, b) => (rank[a.status] - rank[b.status])
    || (a.status === 'closed' ? new Date(b.closed_at) - new Date(a.closed_at)
      : (Number(b.overdue) - Number(a.overdue)) || due(a) - due(b)));
}

/**
 * ctx: { root, setTab, showSession(id), sopById(id), namesOf(ids) }.
 * Returns { showList, showNc, finishClose(pending) }.
 */
export function nonconformanceViews(ctx) {
  const { root } = ctx;

  async function sopOf(id) {
    try {
      return await ctx.sopById(id);
    } catch {
      return null;
    }
  }

  function stepOf(sop, stepId) {
    for (const t of sop?.tasks || []) {
      const step = t.steps.find((s) => s.id === stepId);
      if (step) return `${t.title} › ${step.title}`;
    }
    return stepId ? `step ${shortId(stepId)}` : '—';
  }

  // ---- the list ------------------------------------------------------------------------------

  async function showList(message) {
    ctx.setTab('ncs');
    clear(root);
    const messages = h('div', { class: 'messages' });
    const area = h('div');
    root.append(h('h1', { id: 'nc-list-title', tabindex: '-1' }, 'Nonconformances'),
      h('p', { class: 'hint' }, 'Open ones first, overdue first among them; then the contained '
        + 'ones waiting to be closed, then the last closed.'),
      h('div', { class: 'actions' }, h('button', { type: 'button', class: 'secondary', onclick: () => showList() },
        'Refresh')),
      messages, area);
    if (message) notice(messages, 'ok', message);
    let items;
    try {
      const pages = await Promise.all([
        get('/nonconformances?status=open&limit=100'),
        get('/nonconformances?status=contained&limit=100'),
        get('/nonconformances?status=closed&limit=20'),
      ]);
      items = ordered(pages.flatMap((p) => p.items));
    } catch (error) {
      notice(messages, 'error', explain(error));
      return;
    }
    if (!items.length) {
      area.append(h('p', { class: 'muted' }, 'No nonconformance yet.'));
      return;
    }
    const sops = new Map();
    await Promise.all([...new Set(items.map((nc) => nc.sop_id))].map(async (id) => sops.set(id, await sopOf(id))));
    area.append(h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': 'Nonconformances' },
      h('table', { class: 'ncs' },
        h('thead', {}, h('tr', {}, ['Number', 'Severity', 'Session / SOP', 'Step', 'Opened', 'Due', 'Status']
          .map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, items.map((nc) => {
          const sop = sops.get(nc.sop_id);
          const due = nc.status === 'open' ? ['Contain by ', when(nc.containment_due)]
            : nc.status === 'contained' ? ['Close by ', when(nc.close_due)] : ['Closed ', when(nc.closed_at)];
          return h('tr', { class: nc.overdue && nc.status !== 'closed' ? 'overdue' : null },
            h('td', {}, h('button', {
              type: 'button', class: 'link', onclick: () => showNc(nc.id),
              'aria-label': `Open ${nc.number}, ${STATUS[nc.status]}${nc.overdue ? ', overdue' : ''}`,
            }, nc.number)),
            h('td', {}, severityBadge(nc)),
            h('td', {}, sop ? `${sop.title} v${sop.version}` : `SOP ${shortId(nc.sop_id)}`,
              h('br'), h('span', { class: 'muted' }, `session ${shortId(nc.session_id)}`)),
            h('td', {}, stepOf(sop, nc.step_id)),
            h('td', {}, when(nc.opened_at)),
            h('td', {}, due),
            h('td', {}, statusBadge(nc)));
        })))));
  }

  // ---- one NC --------------------------------------------------------------------------------

  async function chain(id) {
    const entries = [];
    for (;;) {
      const page = await get(`/audit${query({ chain: `nc:${id}`, limit: 100, offset: entries.length })}`);
      entries.push(...page.items);
      if (!page.items.length || entries.length >= page.total || entries.length >= 1000) return entries;
    }
  }

  const fact = (term, value) => h('div', {}, h('dt', {}, term), h('dd', {}, value));

  /** One NC; `message`: what just happened (ok), `problem`: what did not (an error or words). */
  async function showNc(id, message, problem) {
    ctx.setTab('ncs');
    let nc;
    try {
      nc = await get(`/nonconformances/${id}`);
    } catch (error) {
      clear(root).append(back(), h('div'));
      notice(root.lastChild, 'error', explain(error));
      return;
    }
    const sop = await sopOf(nc.sop_id);
    let entries = null;
    try {
      entries = await chain(nc.id);
    } catch {
      entries = null;
    }
    const names = await ctx.namesOf([nc.opened_by, nc.contained_by, nc.closed_by, nc.owner_id,
      ...(entries || []).map((e) => e.actor_id)]);
    const who = (pid) => (pid ? personName(names.get(pid), pid) : 'the service');
    const messages = h('div', { class: 'messages' });
    clear(root);
    append(root, [
      back(),
      h('h1', { id: 'nc-title', tabindex: '-1' }, nc.number, ' ', h('span', { class: 'muted' }, SEVERITY[nc.severity])),
      h('p', { class: 'meta badges' }, statusBadge(nc), ' ', severityBadge(nc)),
      h('dl', { class: 'facts' },
        fact('What', nc.description || '—'),
        fact('SOP', sop ? `${sop.title} v${sop.version}` : h('code', {}, nc.sop_id)),
        fact('Step', stepOf(sop, nc.step_id)),
        fact('Session', h('button', { type: 'button', class: 'link', onclick: () => ctx.showSession(nc.session_id) },
          `Open session ${shortId(nc.session_id)}`)),
        fact('Opened', [when(nc.opened_at), ' by ', who(nc.opened_by)]),
        nc.hold ? fact('Holds', 'The session is stopped on this step until the NC is contained.') : null,
        fact('Contain by', when(nc.containment_due)),
        fact('Close by', when(nc.close_due)),
        nc.containment ? fact('Containment', nc.containment) : null,
        nc.contained_at ? fact('Contained', [when(nc.contained_at), ' by ', who(nc.contained_by)]) : null,
        nc.disposition ? fact('Disposition', DISPOSITIONS[nc.disposition] || nc.disposition) : null,
        nc.corrective_action ? fact('Corrective action', nc.corrective_action) : null,
        nc.closed_at ? fact('Closed', [when(nc.closed_at), ' by ', who(nc.closed_by)]) : null,
        nc.evidence?.length ? fact('Evidence', `${nc.evidence.length} file${nc.evidence.length === 1 ? '' : 's'} `
          + 'with the failed check (on the session\'s timeline)') : null),
      nc.signature ? [h('h2', {}, 'Closing signature'), manifest(nc.signature)] : null,
      messages,
      nc.status === 'open' ? containForm(nc, messages) : null,
      nc.status === 'contained' ? closeForm(nc, messages) : null,
      h('h2', {}, 'Timeline'),
      entries ? timeline(entries, who) : h('p', { class: 'notice notice-warn' }, 'The NC\'s audit chain could not be read.'),
    ]);
    if (message) notice(messages, 'ok', message);
    if (problem) notice(messages, 'error', typeof problem === 'string' ? problem : explain(problem));
    root.querySelector('#nc-title').focus();
  }

  function back() {
    return h('button', { type: 'button', class: 'secondary small back', onclick: () => showList() },
      h('span', { 'aria-hidden': 'true' }, '← '), 'All nonconformances');
  }

  function timeline(entries, who) {
    if (!entries.length) return h('p', { class: 'muted' }, 'No entries.');
    return h('ol', { class: 'timeline' }, entries.map((e) => {
      const d = e.detail || {};
      const lines = [
        d.containment ? `Containment: ${d.containment}` : null,
        d.disposition ? `Disposition: ${DISPOSITIONS[d.disposition] || d.disposition}` : null,
        d.corrective_action ? `Corrective action: ${d.corrective_action}` : null,
        d.deadline ? `Missed: ${d.deadline}` : null,
        d.meaning ? `Meaning: ${MEANINGS[d.meaning]?.word || d.meaning}` : null,
        d.statement ? `Statement: “${d.statement}”` : null,
      ].filter(Boolean);
      const kind = e.action === 'nonconformance_closed' || e.action === 'signed' ? 'signed'
        : e.action === 'nonconformance_contained' ? 'passed' : e.action === 'nonconformance_overdue' ? 'paused' : 'failed';
      return h('li', { class: `event event-${kind}` },
        h('div', { class: 'event-time' }, when(e.at, { seconds: true })),
        h('div', { class: 'event-body' },
          h('p', { class: 'event-title' }, ACTIONS[e.action] || e.action.replace(/_/g, ' '),
            e.outcome && e.outcome !== 'accepted' ? ` (${e.outcome})` : ''),
          h('p', {}, e.actor_role === 'system' || !e.actor_id ? 'by the service' : `by ${who(e.actor_id)} (${e.actor_role})`),
          lines.map((l) => h('p', {}, l))));
    }));
  }

  function containForm(nc, messages) {
    const text = h('textarea', { name: 'containment', rows: 3, required: true, maxlength: 2000 });
    const errors = h('div');
    return h('form', {
      class: 'card nc-contain', 'aria-labelledby': 'contain-title', novalidate: true,
      onsubmit: async (event) => {
        event.preventDefault();
        const containment = text.value.trim();
        if (!containment) {
          text.setAttribute('aria-invalid', 'true');
          notice(errors, 'error', 'Say what was done to contain the problem.');
          text.focus();
          return;
        }
        event.submitter?.setAttribute('disabled', '');
        try {
          await post(`/nonconformances/${nc.id}/contain`, { containment });
          showNc(nc.id, nc.hold ? 'Contained: the worker can go on with the session.' : 'Contained.');
        } catch (error) {
          if (error instanceof ApiError && error.status === 409) showNc(nc.id, null, error);
          else {
            event.submitter?.removeAttribute('disabled');
            notice(errors, 'error', explain(error));
          }
        }
      },
    },
    h('h2', { id: 'contain-title' }, 'Contain'),
    field('Containment', text, 'What was done so that the problem goes no further '
      + '(parts set aside, line stopped, …).'),
    errors,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Contain')));
  }

  function closeForm(nc, messages) {
    const disposition = h('select', { name: 'disposition', required: true },
      h('option', { value: '' }, 'Choose…'),
      Object.entries(DISPOSITIONS).map(([v, text]) => h('option', { value: v }, text)));
    const action = h('textarea', { name: 'corrective_action', rows: 3, required: true, maxlength: 2000 });
    const errors = h('div');
    const form = h('form', {
      class: 'card nc-close', 'aria-labelledby': 'close-title', novalidate: true,
      onsubmit: async (event) => {
        event.preventDefault();
        const body = { disposition: disposition.value, corrective_action: action.value.trim() };
        const statement = (form.elements.statement.value || '').trim();
        if (statement) body.statement = statement;
        for (const [control, bad] of [[disposition, !body.disposition], [action, !body.corrective_action]]) {
          if (bad) control.setAttribute('aria-invalid', 'true');
          else control.removeAttribute('aria-invalid');
        }
        if (!body.disposition || !body.corrective_action) {
          notice(errors, 'error', 'Choose a disposition and say what corrective action was taken.');
          (body.disposition ? action : disposition).focus();
          return;
        }
        event.submitter?.setAttribute('disabled', '');
        try {
          await closeNonconformance(nc.id, body);
          showNc(nc.id, 'Closed and signed.');
        } catch (error) {
          if (error instanceof ApiError && error.status === 409) showNc(nc.id, null, error);
          else {
            event.submitter?.removeAttribute('disabled');
            notice(errors, 'error', explain(error));
          }
        }
      },
    },
    h('h2', { id: 'close-title' }, 'Close'),
    h('p', {}, `Closing is your electronic signature, with the meaning "${MEANINGS.approved.sentence}"`),
    field('Disposition', disposition, 'What happens to what the failed check found.'),
    field('Corrective action', action, 'What was changed so that it does not happen again.'),
    statementField(field),
    errors,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Close and sign')));
    return form;
  }

  /** Back from the provider's sign-in: the closing the supervisor started, sent once. */
  async function finishClose(pending, resume) {
    const { nonconformance, error } = await resume(pending);
    if (nonconformance) showNc(pending.nc_id, 'Closed and signed.');
    else showNc(pending.nc_id, null, error);
  }

  return { showList, showNc, finishClose };
}
