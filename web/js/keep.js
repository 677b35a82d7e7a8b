// What the worker's page keeps to carry on when the service does not answer, and the one
// place where the page decides, as the service would, what a check does to the session.
//
// Kept: the running session as the service last answered it, the steps of its SOP, the
// SOPs to start from, and when the service said so. It is written on every answer of the
// service, read when the page opens (before any request: a phone in a basement shows its
// step at once), and forgotten at sign-out. The checks not yet delivered stay in the outbox
// (outbox.js); what the page shows is the kept session with those checks applied by
// `applyCheck` below, until the service answers: then its answer replaces the kept copy.
//
// localStorage, not IndexedDB: the outbox is already there, and both are read and written
// synchronously. A reload, a closed tab or a killed page comes between two tasks, never inside
// one: a delivered check is in the kept session before it leaves the outbox (outbox.js
// announces the delivery first), so the page never reopens on a state that lost a check or
// counts one twice. The start-up needs no await before the first paint, and the kept data
// (one session, one SOP's steps, the list of SOPs) is tens of kilobytes against a quota of
// megabytes. The service worker (sw.js) keeps only the app's files, never an answer of the
// API: a copy it kept answered for the session with whatever read came last (a list fetched
// before the start said "no session").

const PREFIX = 'worksession.keep.';
const ACTIVE = new Set(['in_progress', 'paused']);

export class Keep {
  constructor(userId) {
    this.key = `${PREFIX}${userId}`;
    this.data = read(this.key);
  }

  /** The session the service last gave as running or paused (null: none, or never asked). */
  get session() { return this.data?.session || null; }

  /** The steps of that session's SOP, in order (see `planSteps`), when kept. */
  get steps() {
    const { session, steps, steps_of: of } = this.data || {};
    return session && steps && of === session.sop.id ? steps : null;
  }

  get sops() { return this.data?.sops || null; }

  /** When the service last answered (ISO), or null. */
  get savedAt() { return this.data?.saved_at || null; }

  get exists() { return Boolean(this.data); }

  /**
   * The service's answer: `session` (any status: a closed one, or null, is kept as "no
   * session running"), the `steps` of its SOP when known, and the `sops` to start from (the
   * ones kept stay when not given).
   */
  save({ session, steps, sops }) {
    const running = session && ACTIVE.has(session.status) ? session : null;
    const next = {
      saved_at: new Date().toISOString(),
      session: running,
      steps: running && steps ? steps : null,
      steps_of: running && steps ? running.sop.id : null,
      sops: sops || this.data?.sops || null,
    };
    this.data = next;
    try {
      localStorage.setItem(this.key, JSON.stringify(next));
    } catch {
      // storage full: the list of SOPs is the part that can go (only the start page needs it)
      try {
        localStorage.setItem(this.key, JSON.stringify({ ...next, sops: null }));
      } catch {
        // nothing kept this time; the page goes on with what it holds
      }
    }
  }

  static forget(userId) {
    localStorage.removeItem(`${PREFIX}${userId}`);
  }
}

function read(key) {
  try {
    const data = JSON.parse(localStorage.getItem(key) || 'null');
    return data && typeof data === 'object' ? data : null;
  } catch {
    return null;
  }
}

/**
 * An SOP as the API answers it (tasks and their steps) as the ordered steps a session walks
 * through, in the shape of a session's `current_step`: mirrors domain/sop.py `Sop.plan`
 * (tasks by position, steps by position within).
 */
export function planSteps(sop) {
  const byPosition = (a, b) => a.position - b.position;
  const steps = [...sop.tasks].sort(byPosition).flatMap((task) => [...task.steps].sort(byPosition)
    .map((step) => ({
      id: step.id, title: step.title, instructions: step.instructions ?? null,
      check: step.check, task: { id: task.id, title: task.title },
    })));
  return steps.map((step, index) => ({ ...step, index, total: steps.length }));
}

/**
 * The result of a check as the service will decide it: mirrors domain/sop.py
 * `CheckSpec.decide`. A confirm check is what the worker said; a measurement passes when
 * min <= value <= max (either bound may be missing), else it fails. null: the body is not a
 * check of that kind (the service would refuse it with a 422).
 */
export function decide(check, body) {
  if (check.kind === 'confirm') {
    return body.value == null && (body.result === 'passed' || body.result === 'failed')
      ? body.result : null;
  }
  const { value } = body;
  if (typeof value !== 'number' || !Number.isFinite(value)) return null;
  const within = (check.min == null || value >= check.min) && (check.max == null || value <= check.max);
  const measured = within ? 'passed' : 'failed';
  return body.result != null && body.result !== measured ? null : measured;
}

/**
 * The session after one check, as the service will record it: mirrors domain/work_session.py
 * `WorkSession.add_check` (with `advance_to_next_step` and `complete`), the only rule there
 * is for it. A check_id the session already has changes nothing (the service records it
 * once). Refused, as the service would refuse it: a session not in progress, a step that
 * is not the current one, a step awaiting verification, a body that cannot be that step's
 * check. A passed check moves the session to the next step (unless the step wants a second
 * person's verification: then it waits), or completes it after the last one, and clears
 * `needs_attention`; a failed one (a measurement out of range is one) is recorded and the
 * step stays. Not decided here: whether failures in a row raise `needs_attention` (the
 * service's setting); the service's answer says.
 *
 * Returns { session } (a new object; the argument is not changed) or { refused: code } with
 * the code of the service's problem type.
 */
export function applyCheck(session, steps, body, { now = new Date().toISOString(), by } = {}) {
  if (session.checks.some((c) => c.id === body.check_id)) return { session };
  const i = steps ? steps.findIndex((s) => s.id === body.step_id) : -1;
  if (!steps || i < 0) return { refused: 'unknown-step' };
  const result = decide(steps[i].check, body);
  if (!result) return { refused: 'invalid-input' };
  if (session.locked) return { refused: 'session-locked' };
  if (session.status !== 'in_progress') return { refused: 'wrong-state' };
  if (body.step_id !== session.current_step_id) return { refused: 'step-not-current' };
  if (session.awaiting_verification) return { refused: 'awaiting-verification' };
  const check = {
    id: body.check_id, step_id: body.step_id, value: body.value ?? null,
    notes: body.notes ?? null, evidence_uri: body.evidence_uri ?? null,
    result, checked_at: now, checked_by: by ?? session.worker_id, local: true,
  };
  const next = { ...session, checks: [...session.checks, check] };
  if (result === 'passed') {
    next.needs_attention = false;
    const after = steps[i + 1];
    if (steps[i].check.verify) { // done, but not released until a second person signs
      next.awaiting_verification = { step_id: body.step_id, check_id: body.check_id, since: now };
    } else if (after) {
      next.current_step_id = after.id;
      next.current_step = after;
      next.next_step = steps[i + 2] ? { id: steps[i + 2].id, title: steps[i + 2].title } : null;
    } else {
      Object.assign(next, {
        status: 'completed', completed_at: now, current_step_id: null, current_step: null,
        next_step: null,
      });
    }
  }
  return { session: next };
}

/**
 * The kept (or last answered) session with the checks still waiting in the outbox applied
 * in the order they were recorded. `unsent`: the waiting checks of this session that could
 * not be applied (the SOP's steps are unknown, or the service would refuse them): they are
 * still sent, and the service decides.
 */
export function withWaiting(session, steps, items) {
  let shown = session;
  const unsent = [];
  for (const item of items) {
    if (item.session_id !== session.id) continue;
    const outcome = applyCheck(shown, steps, item.body, { now: item.queued_at });
    if (outcome.session) shown = outcome.session;
    else unsent.push(item);
  }
  return unsent.length ? { ...shown, unsent } : shown;
}

/** Where a session stands, in words: "at step 2 (Measure residual voltage)", "paused at…". */
export function whereIs(session) {
  if (!session) return 'with no session running';
  if (session.status === 'completed') return 'completed';
  if (session.status === 'cancelled') return 'cancelled';
  const step = session.current_step;
  const at = step ? `at step ${step.index + 1} (${step.title})` : '';
  return session.status === 'paused' ? `paused ${at}` : at;
}

/** Whether two views of a session put the worker at the same place. */
export function samePlace(a, b) {
  return (a?.id ?? null) === (b?.id ?? null) && (a?.status ?? null) === (b?.status ?? null)
    && (a?.current_step_id ?? null) === (b?.current_step_id ?? null);
}

/**
 * The sentence that tells the worker the service sees the session otherwise than the phone
 * did (null when it does not): `phone` is what the page showed, `service` what it shows now
 * from the service's answer; `item` a check of the phone's (an outbox item) that the service
 * recorded as `recorded` (maybe with another result), or did not record (`refusal`, in words).
 */
export function disagreement({ phone, service, item, recorded, refusal }) {
  const parts = [];
  const label = item?.label || {};
  const step = label.step_index != null ? `step ${label.step_index + 1}` : 'a step';
  const title = label.step_title ? ` (${label.step_title})` : '';
  if (recorded && label.result && recorded.result !== label.result) {
    parts.push(`The service recorded ${step}${title} as ${recorded.result}; your phone had `
      + `${label.result === 'passed' ? 'moved on' : 'kept you on it'}.`);
  }
  // a phone that showed nothing (signed in again, its kept copy forgotten) has no place to differ
  if (phone && !samePlace(phone, service)) {
    let before = `showed it ${whereIs(phone)}`;
    if (phone?.status === 'completed') {
      before = 'had finished it';
    } else if (phone?.status === 'in_progress' && phone.current_step && service?.current_step
        && phone.current_step.index > service.current_step.index) {
      before = `had moved on to step ${phone.current_step.index + 1} (${phone.current_step.title})`;
    }
    parts.push(`The service has this session ${whereIs(service)}; your phone ${before}.`);
  }
  if (refusal) parts.push(`Your check on ${step}${title} was not recorded. ${refusal}`);
  return parts.length ? parts.join(' ') : null;
}
