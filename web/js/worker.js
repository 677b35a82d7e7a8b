// The worker's view, phone first: the current step as a card, the SOPs to start from, history.
import { h, clear, uuid4 } from './dom.js';
import { ApiError, describe, get, post, query, setReachHandler } from './api.js';
import {
  Keep, decide, disagreement, planSteps, withWaiting,
} from './keep.js';
import { putFile, removeFile } from './files.js';
import {
  MEANINGS, manifest, needsReauthentication, reauthenticationText, resumeSignature, sign, signatureBody,
  statementField,
} from './sign.js';
import {
  ask, badge, field, fileSize, formatNumber, lockBadge, notice, pager, rangeText, readMeasurement,
  statusWord, when,
} from './ui.js';

const HISTORY_PAGE = 10;
const ACTIVE = new Set(['in_progress', 'paused']);
// A confirm step is passed (or failed) with one tap; the check waits this long on the page,
// with an Undo, before it goes to the outbox: a check the service has cannot be withdrawn.
export const UNDO_SECONDS = 5;
// The page opens on what it kept, and says the service is not answering when the first
// answer has not come in this long (the kept copy is then all there is).
const FIRST_ANSWER_MS = 3000;
// While the service does not answer, the page asks it again this often.
const RETRY_MS = 10000;
// while a nonconformance holds the session: how often it is read again
const HOLD_REREAD_MS = 10000;
// The service answering again reloads the page's state, at most this often.
const REACH_RELOAD_MS = 3000;
// At most this many files on one check (the API's limit).
const MAX_FILES = 10;
// What a step's check.evidence asks of the worker, as the card's heading of its files.
const EVIDENCE_TITLE = {
  optional: 'Photo or file (optional)',
  required: 'Photo or file: required for this step',
  required_on_fail: 'Photo or file: required if the check fails',
};

const evidenceRule = (step) => step.check.evidence || 'optional';
const VERIFY_WAIT = 'Passed. This step needs a second person to verify it: ask your supervisor. '
  + 'You go on to the next step once they have signed.';


/** A 409 (or other refusal) in words a person on the floor can act on. */
export function explain(error) {
  if (error?.sentence) return error.sentence; // outbox.js: a file refused or lost, in words
  if (needsReauthentication(error)) return reauthenticationText(error);
  if (error instanceof ApiError && error.status === 409) {
    const status = error.problem.session_status;
    switch (error.code) {
      case 'session-locked':
        return 'A supervisor has approved and locked this session: it can no longer be changed.';
      case 'step-not-current':
        return 'This step has already been checked (perhaps on another device). '
          + 'Here is the step you are on now.';
      case 'wrong-state':
        if (status === 'paused') return 'The session is paused: resume it first.';
        if (status === 'in_progress') return 'The session is already running.';
        if (status) return `The session is ${statusWord(status).toLowerCase()}: it cannot be changed any more.`;
        break;
      case 'held':
        return 'Stopped: a supervisor must first contain the nonconformance this step opened. '
          + 'You can go on once they have.';
      case 'awaiting-verification':
        return 'This step is waiting for a second person to verify it: you can go on once they have.';
      case 'sop-not-startable':
        return `This SOP cannot be started (${error.problem.detail}). Pick another one or ask your supervisor.`;
      default:
        break;
    }
  }
  return describe(error);
}

/**
 * What this device kept of a worker's sessions goes (sign-out). Through this module, not
 * keep.js imported by app.js: a seventh module at app.js's level waited for one of the
 * browser's six connections, a round trip more on the first load.
 */
export const forgetKept = (userId) => Keep.forget(userId);

export function mountWorker(root, {
  claims, outbox, pendingBar, offlineBar, pendingSignature = null,
}) {
  const keep = new Keep(claims.sub);
  const state = {
    server: null, // the session as the service last answered (or the kept copy of that)
    steps: null, // the steps of its SOP, in order (keep.js planSteps), for the local rule
    stepsOf: null, // the SOP those steps are of
    session: null, // shown: `server` (in_progress / paused) with the waiting checks applied
    closed: null, // the session that just closed, for its summary
    sops: [],
    feedback: null, // { kind, text } about the last check, shown on the card
    lastCheck: null, // the outbox item of the worker's last check here, which `feedback` tells
    loadError: null,
    answered: false, // the service has answered this page at least once
    answers: 0, // the service's answers about the session applied so far (fromService)
    reached: true, // the last request reached the service
    historyOffset: 0,
    // the files picked for the step on the card, before its check is recorded: { sessionId,
    // stepId, checkId (the check_id the check will carry; its files are kept under it in
    // IndexedDB, files.js), files: [{ id, name, type, bytes, url, saving }], error }
    draft: null,
  };

  const disagreements = h('div', { class: 'messages disagreements' });
  const pageMessages = h('div', { class: 'messages' });
  const sessionArea = h('section', { class: 'stack', 'aria-label': 'Current session' });
  const startArea = h('section', { class: 'stack' }); // named by its heading, when it has one
  const historyArea = h('section', { class: 'stack', 'aria-labelledby': 'history-heading' });
  root.append(disagreements, pageMessages, sessionArea, startArea, historyArea);

  // ---- loading ---------------------------------------------------------------------------

  /** Opens on the kept copy (no wait), then asks the service, which has the last word. */
  function startUp() {
    if (keep.exists) {
      state.sops = keep.sops || [];
      state.server = keep.session;
      state.steps = keep.steps;
      state.stepsOf = keep.steps ? keep.session.sop.id : null;
      project();
      render();
    }
    renderLink();
    load();
    setTimeout(() => {
      if (state.answered) return;
      state.reached = false;
      renderLink();
      if (!keep.exists && !state.loadError) {
        notice(pageMessages, 'info', 'The service has not answered yet: still trying.');
      }
    }, FIRST_ANSWER_MS);
    const retry = setInterval(() => {
      if (outbox.stopped) clearInterval(retry);
      else if (!state.reached || state.loadError) load();
    }, RETRY_MS);
  }

  let loading = null;
  let loadedAt = 0;
  function load() {
    loadedAt = Date.now();
    loading ||= fetchState().finally(() => { loading = null; });
    return loading;
  }

  async function fetchState() {
    let answer;
    let seen; // the answers applied when this read began
    try {
      // Checks waiting go first: a session read before they arrive would be older than them.
      if (outbox.size) await outbox.flush();
      seen = state.answers;
      // The session list (not /sessions/current) finds the active one: no 404 when none.
      const [sops, running, paused] = await Promise.all([
        get('/sops?limit=100'),
        get('/sessions?status=in_progress&limit=1'),
        get('/sessions?status=paused&limit=1'),
      ]);
      const confirmed = sops.items.filter((s) => s.status === 'confirmed');
      const active = running.items[0] || paused.items[0];
      // the session this page had running, closed meanwhile (elsewhere): its summary
      const gone = !active && state.server && ACTIVE.has(state.server.status) ? state.server.id : null;
      const session = active || gone ? await get(`/sessions/${(active || { id: gone }).id}`) : null;
      answer = { session, sops: confirmed, steps: session ? await stepsFor(session, confirmed) : null };
    } catch (error) {
      const unreachable = error.transient || !(error instanceof ApiError);
      if (unreachable && (state.server || keep.exists)) {
        // carry on with what this phone kept; the bar above says the service is not answering
        state.loadError = null;
      } else {
        state.loadError = error;
        notice(pageMessages, 'error', explain(error), [
          h('button', { type: 'button', class: 'secondary', onclick: load }, 'Try again')]);
        pageMessages.prepend(h('h1', {}, 'Work sessions'));
      }
      render();
      loadHistory();
      return;
    }
    state.answered = true;
    state.loadError = null;
    notice(pageMessages, 'info', '');
    state.sops = answer.sops;
    // an answer that came in while this read was under way (a start, a check delivered) is
    // newer than it: the read must not put the session back as it was before
    if (state.answers === seen) fromService(answer.session, { steps: answer.steps, sops: answer.sops });
    else render();
    loadHistory();
  }

  /** The steps of a session's SOP: held already, in the list of SOPs, or asked for. */
  async function stepsFor(session, sops = state.sops) {
    if (state.steps && state.stepsOf === session.sop.id) return state.steps;
    const sop = sops.find((s) => s.id === session.sop.id)
      || await get(`/sops/${session.sop.id}`).catch(() => null); // e.g. archived since
    return sop ? planSteps(sop) : null;
  }

  /** What the page shows: the service's session with the checks still waiting applied. */
  function project() {
    const s = state.server;
    if (!s) {
      state.session = null;
      return;
    }
    const shown = withWaiting(s, state.steps, outbox.items);
    if (ACTIVE.has(shown.status)) {
      state.session = shown;
      state.closed = null;
    } else {
      state.session = null;
      state.closed = shown;
    }
  }

  const shownNow = () => state.session || state.closed;
  const look = (s) => (s ? [s.id, s.status, s.current_step_id, s.needs_attention, s.locked,
    s.checks.length, s.unsent?.length || 0, s.held?.nonconformance_id].join() : '');

  /**
   * An answer of the service about the worker's session (`session`, or none running):
   * kept, then shown with the checks still waiting. When it puts the session elsewhere than
   * the phone had it while checks of the phone's were in play (`item`: the one this answer
   * is about), the worker is told. The card is built again only when what it shows changed
   * (a value being typed on it stays).
   */
  function fromService(session, {
    steps, sops, item = null, recorded = null, refusal = null, phone = shownNow(),
    focus = false,
  } = {}) {
    // checks are only ever added: an answer with fewer than the one held is older than it
    if (session && state.server && session.id === state.server.id
        && session.checks.length < state.server.checks.length) return;
    state.answers += 1;
    const waiting = item || outbox.items.some((i) => i.session_id === phone?.id);
    if (session && steps === undefined && state.stepsOf !== session.sop.id) {
      const sop = state.sops.find((x) => x.id === session.sop.id);
      steps = sop ? planSteps(sop) : null;
      if (!sop) stepsFor(session).then((found) => { if (found) useSteps(session, found); });
    }
    if (steps !== undefined && session) {
      state.steps = steps;
      state.stepsOf = steps ? session.sop.id : null;
    }
    state.server = session;
    keep.save({ session, steps: state.steps, sops });
    project();
    const service = shownNow();
    if (waiting) {
      const text = disagreement({ phone, service, item, recorded, refusal });
      if (text) tell(text);
    }
    if (!focus && state.session && look(phone) === look(service)
        && sessionArea.querySelector('.step-card')) {
      refreshFeedback();
      renderPending();
      return;
    }
    render();
    if (state.session) {
      if (focus || (phone && phone.current_step_id !== state.session.current_step_id)) {
        sessionArea.querySelector('.step-title')?.focus();
      }
    } else if (state.closed && (focus || look(phone) !== look(service))) {
      sessionArea.querySelector('.closed-title')?.focus();
    }
  }

  function useSteps(session, steps) {
    if (state.server?.id !== session.id) return;
    state.steps = steps;
    state.stepsOf = session.sop.id;
    keep.save({ session: state.server, steps });
    const before = look(shownNow());
    project();
    if (look(shownNow()) !== before) render();
  }

  function applySession(session, options = {}) {
    fromService(session, options);
    loadHistory();
  }

  /** A disagreement between the phone and the service, shown until the next check. */
  let told = [];
  function tell(text) {
    if (told.includes(text)) return;
    told = [...told, text];
    notice(disagreements, 'warn', told.join(' '));
  }

  // ---- held by a nonconformance (a failed check on a `hold` step) ----------------------------
  // The card says which NC it waits for; the session is read again every HOLD_REREAD_MS while
  // it is held (and only then), so Passed / Failed come back once a supervisor contains it.
  const ncNumbers = new Map(); // nonconformance id -> "NC-000012"
  let holdTimer = null;

  function heldSentence(hold) {
    const id = hold.nonconformance_id;
    if (!ncNumbers.has(id)) {
      ncNumbers.set(id, null);
      get(`/nonconformances/${id}`).then((nc) => {
        ncNumbers.set(id, nc.number);
        if (state.session?.held?.nonconformance_id === id) render();
      }).catch(() => ncNumbers.delete(id)); // asked again at the next drawing
    }
    const number = ncNumbers.get(id) || 'the nonconformance this step opened';
    return `Stopped: waiting for a supervisor to contain ${number}. Passed and Failed come `
      + 'back once they have: there is nothing to do here until then.';
  }

  function watchHold() {
    const holding = Boolean(state.session?.held) && !outbox.stopped;
    if (holding && !holdTimer) {
      holdTimer = setInterval(async () => {
        if (document.visibilityState !== 'visible' || !state.server) return;
        try {
          fromService(await get(`/sessions/${state.server.id}`));
        } catch {
          // the next round asks again
        }
      }, HOLD_REREAD_MS);
    } else if (!holding && holdTimer) {
      clearInterval(holdTimer);
      holdTimer = null;
    }
  }

  function render() {
    watchHold();
    if (state.lastCheck) state.feedback = checkFeedback();
    renderSession();
    renderStart();
    renderPending();
    renderLink();
  }

  // ---- the current session -----------------------------------------------------------------

  function renderSession() {
    // the field being typed in keeps the focus (and its caret) through the redraw
    const typing = sessionArea.contains(document.activeElement)
      && ['value', 'notes'].includes(document.activeElement.name) ? document.activeElement : null;
    const caret = typing ? typing.selectionStart : null;
    clear(sessionArea);
    const s = state.session;
    if (!s) {
      if (state.closed) sessionArea.append(closedCard(state.closed));
      return;
    }
    drawSession(s);
    const again = typing && sessionArea.querySelector(`[name="${typing.name}"]`);
    if (again && !again.disabled) {
      again.focus({ preventScroll: true });
      again.setSelectionRange(caret, caret);
    }
  }

  function drawSession(s) {
    const step = s.current_step;
    const done = step ? step.index : 0;
    const total = step ? step.total : 0;
    sessionArea.append(
      h('div', { class: 'session-head' },
        h('p', { class: 'eyebrow' }, 'Current session'),
        h('h1', {}, s.sop.title, ' ', h('span', { class: 'muted' }, `v${s.sop.version}`)),
        h('p', { class: 'meta' }, badge(s.status), ' Started ', when(s.started_at)),
        total ? h('div', { class: 'progress' },
          h('progress', { max: total, value: done, 'aria-label': `${done} of ${total} steps done` }),
          h('span', { 'aria-hidden': 'true' }, `${done} of ${total} done`)) : null),
    );
    if (s.needs_attention) {
      sessionArea.append(h('p', { class: 'notice notice-warn' },
        'This step failed several times: your supervisor has been told and may come to help.'));
    }
    if (s.status === 'paused') {
      sessionArea.append(h('div', { class: 'notice notice-info', role: 'status' },
        h('p', {}, 'Paused since ', when(s.paused_at), '. Resume to go on with the step.')));
    }
    if (step) sessionArea.append(stepCard(s, step));
    sessionArea.append(sessionActions(s));
  }

  function stepCard(s, step) {
    const check = step.check;
    const pending = s.unsent?.find((i) => i.body.step_id === step.id);
    const undoable = heldFor(s.id, step.id);
    const locked = s.status !== 'in_progress' || Boolean(pending) || Boolean(undoable)
      || Boolean(s.awaiting_verification) || Boolean(s.held);
    const feedback = h('div', { class: 'feedback' });
    const errors = h('div');
    const form = h('form', { class: 'check-form', id: 'check-form', novalidate: true });
    // what the worker has typed is kept with the step's draft: the card is drawn again on
    // every answer and refresh, which emptied the fields while they were being filled in
    const draft = locked ? null : draftFor(s, step);

    let valueInput = null;
    if (check.kind === 'measurement') {
      const range = rangeText(check);
      // Text, not type=number: a number field silently read a decimal comma as nothing.
      valueInput = h('input', {
        type: 'text', name: 'value', inputmode: 'decimal', required: true,
        autocomplete: 'off', disabled: locked, class: 'value-input',
        value: pending ? formatNumber(pending.body.value) : (draft?.value || ''),
      });
      const reading = h('p', { class: 'hint value-reading', 'aria-live': 'polite' });
      valueInput.addEventListener('input', () => {
        if (draft) draft.value = valueInput.value;
        const read = readMeasurement(valueInput.value, check.unit);
        reading.textContent = 'value' in read
          ? `Will record ${formatNumber(read.value)}${check.unit ? ` ${check.unit}` : ''}` : '';
        if ('value' in read && evidenceRule(step) === 'required_on_fail'
            && decide(check, { value: read.value }) === 'failed') {
          reading.textContent += ': outside the allowed range, so a photo or file is needed.';
        }
      });
      const unit = check.unit ? ` (${check.unit})` : '';
      form.append(h('div', { class: 'check-prompt' },
        field(`${check.prompt}${unit}`, valueInput,
          range ? `Allowed range: ${range}` : 'Enter the value you measured.', { hintFirst: true }),
        reading));
      if (draft?.value) valueInput.dispatchEvent(new Event('input')); // its reading again
    } else {
      // answered by the Passed / Failed buttons of the step's bar, one tap
      form.append(h('p', { class: 'check-prompt confirm-prompt', id: 'check-prompt' }, check.prompt));
    }
    form.append(field('Notes (optional)', h('textarea', {
      name: 'notes', rows: 2, maxlength: 2000, disabled: locked,
      value: undoable?.body.notes || draft?.notes || '',
      oninput: (event) => { if (draft) draft.notes = event.target.value; },
    })));
    form.append(evidencePart(s, step, locked), errors);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      if (check.kind === 'measurement') submitCheck(form, errors, s, step, valueInput);
    });

    if (s.held) {
      notice(feedback, 'warn', heldSentence(s.held));
    } else if (s.awaiting_verification?.step_id === step.id && !state.feedback) {
      notice(feedback, 'info', VERIFY_WAIT);
    } else if (pending) {
      const what = pending.body.result ? statusWord(pending.body.result)
        : `${formatNumber(pending.body.value)}${check.unit ? ` ${check.unit}` : ''}`;
      notice(feedback, 'info', `Your check (${what}) is saved on this phone and will be sent `
        + 'automatically. No need to do it again.');
    } else if (state.feedback) {
      notice(feedback, state.feedback.kind, state.feedback.text);
    }

    const attempts = s.checks.filter((c) => c.step_id === step.id && c.result === 'failed');
    const unit = check.unit ? ` ${check.unit}` : '';
    return h('article', { class: 'card step-card', 'aria-labelledby': 'step-title' },
      h('p', { class: 'eyebrow' }, `Task: ${step.task.title}`),
      h('p', { class: 'step-count' }, `Step ${step.index + 1} of ${step.total}`),
      h('h2', { id: 'step-title', class: 'step-title', tabindex: '-1' }, step.title),
      step.instructions ? h('p', { class: 'instructions' }, step.instructions) : null,
      feedback,
      form,
      stepBar(s, step, form, errors, valueInput, { locked, undoable }),
      attempts.length ? h('details', { class: 'attempts' },
        h('summary', {}, `${attempts.length} failed attempt${attempts.length === 1 ? '' : 's'} on this step`),
        h('ul', {}, attempts.map((c) => h('li', {}, when(c.checked_at, { seconds: true }), ': failed',
          c.value != null ? ` (${formatNumber(c.value)}${unit})` : '',
          c.notes ? ` — ${c.notes}` : '')))) : null,
      h('p', { class: 'next' }, s.next_step ? `Next: ${s.next_step.title}` : 'This is the last step.'));
  }

  // ---- evidence files: picked on the card, kept in IndexedDB, sent with the check ----------

  /** The files being picked for this step (a draft for another step goes, files and all). */
  function draftFor(s, step) {
    const d = state.draft;
    if (d && d.sessionId === s.id && d.stepId === step.id) return d;
    dropDraft();
    state.draft = { sessionId: s.id, stepId: step.id, checkId: uuid4(), files: [], error: null };
    return state.draft;
  }

  function dropDraft() {
    const d = state.draft;
    if (!d) return;
    for (const f of d.files) {
      URL.revokeObjectURL(f.url);
      removeFile(d.checkId, f.id).catch(() => {}); // else swept at the next start
    }
    state.draft = null;
  }

  function addFile(draft, file) {
    if (draft.files.length >= MAX_FILES) {
      draft.error = `At most ${MAX_FILES} files go with one check.`;
      return;
    }
    const entry = {
      id: uuid4(), name: file.name || '', type: file.type || '', bytes: file.size,
      url: URL.createObjectURL(file),
    };
    entry.saving = putFile(claims.sub, draft.checkId, entry.id, file).catch(() => {
      draft.files = draft.files.filter((f) => f !== entry);
      URL.revokeObjectURL(entry.url);
      draft.error = `"${entry.name || 'The photo'}" could not be kept on this phone (its `
        + 'storage may be full). Try again, or free some space.';
      drawEvidence();
    });
    draft.files.push(entry);
    draft.error = null;
  }

  function removeDraftFile(draft, entry) {
    draft.files = draft.files.filter((f) => f !== entry);
    URL.revokeObjectURL(entry.url);
    entry.saving.then(() => removeFile(draft.checkId, entry.id)).catch(() => {});
    draft.error = null;
    drawEvidence();
    sessionArea.querySelector('.evidence-take')?.focus();
  }

  /** The card's part for files: what the step asks, the thumbnails, Take a photo / Choose a file. */
  function evidencePart(s, step, locked) {
    const rule = evidenceRule(step);
    if (rule === 'none') return null;
    const draft = draftFor(s, step);
    const measurement = step.check.kind === 'measurement';
    let hint = null;
    if (rule === 'required') hint = 'Add at least one photo (or a PDF) before you record the check.';
    if (rule === 'required_on_fail') {
      hint = measurement ? 'A value outside the allowed range needs a photo (or a PDF) of what you found.'
        : 'Failed needs a photo (or a PDF) of what is wrong.';
    }
    // Two inputs: the camera at once (capture), or any photo or PDF already on the phone.
    // Hidden; the buttons open them (a 48 px target, a name a reader announces).
    const pick = (event) => {
      const picked = [...event.target.files];
      event.target.value = '';
      for (const file of picked) addFile(draft, file);
      drawEvidence();
    };
    const camera = h('input', {
      type: 'file', accept: 'image/*', capture: 'environment', hidden: true,
      class: 'evidence-camera', 'aria-label': 'Take a photo', onchange: pick,
    });
    const chooser = h('input', {
      type: 'file', accept: 'image/*,application/pdf', multiple: true, hidden: true,
      class: 'evidence-chooser', 'aria-label': 'Choose a photo or PDF', onchange: pick,
    });
    const list = h('div', { class: 'evidence-files' });
    const box = h('div', {
      class: `evidence evidence-${rule}`, role: 'group', 'aria-labelledby': 'evidence-title',
    },
    h('p', { class: 'evidence-title', id: 'evidence-title' }, EVIDENCE_TITLE[rule] || EVIDENCE_TITLE.optional),
    hint ? h('p', { class: 'hint' }, hint) : null,
    list,
    h('div', { class: 'actions evidence-actions' },
      h('button', {
        type: 'button', class: 'secondary evidence-take', disabled: locked,
        onclick: () => camera.click(),
      }, 'Take a photo'),
      h('button', {
        type: 'button', class: 'secondary evidence-choose', disabled: locked,
        onclick: () => chooser.click(),
      }, 'Choose a file')),
    camera, chooser);
    box.fill = () => {
      clear(list);
      if (draft.files.length) {
        list.append(h('ul', { class: 'evidence-list' }, draft.files.map((f) => h('li', { class: 'evidence-item' },
          f.type.startsWith('image/')
            ? h('img', { class: 'thumb', src: f.url, alt: `Photo to send: ${f.name || 'photo'}` })
            : h('span', { class: 'thumb thumb-file', 'aria-hidden': 'true' }, f.type === 'application/pdf' ? 'PDF' : 'File'),
          h('span', { class: 'evidence-name' }, f.name || 'photo',
            h('span', { class: 'muted' }, ` · ${fileSize(f.bytes)}`)),
          h('button', {
            type: 'button', class: 'secondary evidence-remove', disabled: locked,
            onclick: () => removeDraftFile(draft, f),
          }, 'Remove', h('span', { class: 'visually-hidden' }, ` ${f.name || 'photo'}`))))));
      }
      if (draft.error) list.append(h('p', { class: 'notice notice-error', role: 'alert' }, draft.error));
    };
    box.fill();
    return box;
  }

  function drawEvidence() {
    sessionArea.querySelector('.step-card .evidence')?.fill?.();
  }

  async function submitCheck(form, errors, s, step, valueInput, result) {
    const draft = state.draft?.sessionId === s.id && state.draft.stepId === step.id
      ? state.draft : null;
    const body = { step_id: step.id, check_id: draft?.checkId || uuid4() };
    clear(errors);
    if (step.check.kind === 'measurement') {
      const read = readMeasurement(valueInput.value, step.check.unit);
      if (!('value' in read)) {
        valueInput.setAttribute('aria-invalid', 'true');
        notice(errors, 'error', read.error);
        valueInput.focus();
        return;
      }
      valueInput.removeAttribute('aria-invalid');
      body.value = read.value;
    } else {
      body.result = result;
    }
    const notes = form.elements.notes.value.trim();
    if (notes) body.notes = notes;
    // the files are in IndexedDB before the check is recorded (a file that could not be kept
    // leaves the draft, and says so)
    if (draft?.files.length) await Promise.all(draft.files.map((f) => f.saving));
    const files = draft ? draft.files.map(({ id, name, type, bytes }) => ({ id, name, type, bytes })) : [];
    const missing = evidenceMissing(step, body, files);
    if (missing) {
      notice(errors, 'error', missing);
      sessionArea.querySelector('.evidence-take')?.focus();
      return;
    }
    if (body.result) {
      holdForUndo(s, step, body, files);
      return;
    }
    send(s.id, step, body, files);
  }

  /** Why the check cannot go without a file (the service would refuse it), or null. */
  function evidenceMissing(step, body, files) {
    if (files.length) return null;
    const rule = evidenceRule(step);
    const failed = decide(step.check, body) === 'failed';
    if (rule === 'required') {
      return 'This step needs a photo or file as evidence. Take a photo (or choose a file), '
        + 'then record the check again. Nothing was sent.';
    }
    if (rule !== 'required_on_fail' || !failed) return null;
    if (step.check.kind === 'measurement') {
      const unit = step.check.unit ? ` ${step.check.unit}` : '';
      return `${formatNumber(body.value)}${unit} is outside the allowed range, and a failed `
        + 'check on this step needs a photo or file of what you found. Take a photo (or choose '
        + 'a file), then record the check again. Nothing was sent.';
    }
    return 'A failed check on this step needs a photo or file of what is wrong. Take a photo '
      + '(or choose a file), then tap Failed again. Nothing was sent.';
  }

  function send(sessionId, step, body, files = []) {
    // Kept on the device first, then sent: a lost connection loses nothing. The card moves on
    // at once as the service will decide (keep.js applyCheck); its answer has the last word.
    state.lastCheck = outbox.add(sessionId, body, {
      step_title: step.title, check: step.check, step_index: step.index,
      result: decide(step.check, body),
    }, files);
    if (state.draft?.checkId === body.check_id) {
      // its files now belong to the outbox's check (they stay in IndexedDB until delivered)
      for (const f of state.draft.files) URL.revokeObjectURL(f.url);
      state.draft = null;
    }
    outbox.flush(); // on the wire before the card is drawn again
    told = [];
    clear(disagreements);
    const before = state.session;
    project();
    render();
    if (state.session && state.session.current_step_id !== before?.current_step_id) {
      sessionArea.querySelector('.step-title')?.focus();
    } else if (!state.session) {
      sessionArea.querySelector('.closed-title')?.focus();
    }
  }

  /** What the card says of the worker's last check: its outcome, and whether it waits. */
  function checkFeedback() {
    const item = state.lastCheck;
    const said = feedbackFor(item, shownNow() || { checks: [] });
    if (!said) return null;
    const waiting = outbox.items.some((i) => i.body.check_id === item.body.check_id);
    if (!waiting || (state.reached && navigator.onLine)) return said;
    const n = item.files?.length || 0;
    const what = n ? `Your check and its ${n === 1 ? 'file are' : `${n} files are`}` : 'Your check is';
    return { ...said, text: `${said.text} ${what} saved on this phone and will be sent `
      + 'automatically: no need to do it again.' };
  }

  function refreshFeedback() {
    if (!state.lastCheck) return;
    state.feedback = checkFeedback();
    const s = state.session;
    if (s?.unsent?.some((i) => i.body.step_id === s.current_step_id)) return; // its own notice
    if (s?.held) return; // the hold's sentence stays
    const box = sessionArea.querySelector('.step-card .feedback');
    if (box) notice(box, state.feedback?.kind, state.feedback?.text);
  }

  /** The step's primary action, kept on the screen: Passed / Failed, Record check, or Resume. */
  function stepBar(s, step, form, errors, valueInput, { locked, undoable }) {
    if (undoable) return h('div', { class: 'step-bar' }, undoToast(undoable));
    if (s.status === 'paused') {
      return h('div', { class: 'step-bar' }, h('button', {
        type: 'button', class: 'primary', onclick: () => act(() => post(`/sessions/${s.id}/resume`)),
      }, 'Resume'));
    }
    if (step.check.kind === 'measurement') {
      return h('div', { class: 'step-bar' }, h('button', {
        type: 'submit', form: form.id, class: 'primary', disabled: locked,
      }, 'Record check'));
    }
    const tap = (result) => () => submitCheck(form, errors, s, step, valueInput, result);
    return h('div', { class: 'step-bar', role: 'group', 'aria-labelledby': 'check-prompt' },
      h('button', { type: 'button', class: 'fail', disabled: locked, onclick: tap('failed') }, 'Failed'),
      h('button', { type: 'button', class: 'pass', disabled: locked, onclick: tap('passed') }, 'Passed'));
  }

  // ---- one tap, then a few seconds to undo --------------------------------------------------
  // A Passed / Failed tap waits here, on the page, for UNDO_SECONDS before it is kept in the
  // outbox and sent; Undo drops it. It goes at once when the page is hidden or closed, before
  // a session action and before sign-out, so a tapped check is never lost.
  let held = null; // { sessionId, step, body, until, timer, tick }

  function heldFor(sessionId, stepId) {
    return held && held.sessionId === sessionId && held.step.id === stepId ? held : null;
  }

  function holdForUndo(s, step, body, files = []) {
    commitHeld(); // one at a time
    const ms = UNDO_SECONDS * 1000;
    held = { sessionId: s.id, step, body, files, until: Date.now() + ms };
    held.timer = setTimeout(commitHeld, ms);
    held.tick = setInterval(() => {
      const countdown = sessionArea.querySelector('.undo-countdown');
      if (held && countdown) countdown.textContent = sendingIn(held.until - Date.now());
    }, 250);
    state.feedback = null;
    render();
    sessionArea.querySelector('.undo-text')?.focus();
  }

  function release() {
    const item = held;
    clearTimeout(item.timer);
    clearInterval(item.tick);
    held = null;
    return item;
  }

  function commitHeld() {
    if (!held) return;
    const { sessionId, step, body, files } = release();
    send(sessionId, step, body, files);
  }

  function undo() {
    if (!held) return;
    const { body } = release();
    state.feedback = {
      kind: 'info',
      text: `Undone: "${statusWord(body.result)}" was not recorded. Check the step and answer again.`,
    };
    render();
    const notes = sessionArea.querySelector('textarea[name="notes"]');
    if (notes && body.notes) notes.value = body.notes;
    sessionArea.querySelector('.step-title')?.focus();
  }

  const sendingIn = (ms) => `Sending in ${Math.max(1, Math.ceil(ms / 1000))} s`;

  function undoToast(item) {
    const left = Math.max(0, item.until - Date.now());
    const meter = h('span', { class: 'undo-meter', 'aria-hidden': 'true' });
    meter.style.animationDuration = `${left}ms`;
    const word = statusWord(item.body.result);
    // Undo sits where Failed was, away from Passed: a bounced tap on Passed undoes nothing.
    return h('div', { class: 'undo' }, meter,
      h('button', { type: 'button', class: 'secondary', onclick: undo }, 'Undo'),
      h('p', { class: `undo-text undo-${item.body.result}`, role: 'status', tabindex: '-1' },
        `Recorded: ${word}`,
        h('span', { class: 'visually-hidden' }, `. It is sent in ${UNDO_SECONDS} seconds; Undo takes it back.`),
        h('span', { class: 'undo-countdown', 'aria-hidden': 'true' }, sendingIn(left))));
  }

  window.addEventListener('pagehide', commitHeld);
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'hidden') commitHeld();
  });
  // app.js asks before signing out when checks wait: a tapped one must be counted (and kept)
  window.addEventListener('worksession:before-sign-out', commitHeld);

  function feedbackFor(item, session) {
    const check = session.checks.find((c) => c.id === item.body.check_id);
    const spec = item.label?.check || {};
    if (!check) return null;
    if (check.result === 'passed' && session.awaiting_verification?.check_id === check.id) {
      return { kind: 'info', text: VERIFY_WAIT };
    }
    if (check.result === 'passed') {
      return session.status === 'completed'
        ? { kind: 'ok', text: 'Passed. That was the last step: the session is complete.' }
        : { kind: 'ok', text: `Passed: ${item.label?.step_title || 'step'}. On to the next step.` };
    }
    if (spec.kind === 'measurement') {
      const unit = spec.unit ? ` ${spec.unit}` : '';
      return {
        kind: 'warn',
        text: `Failed: ${formatNumber(check.value)}${unit} is outside the allowed range `
          + `(${rangeText(spec)}). The step stays open: put it right, measure again and `
          + 'record the new value.',
      };
    }
    return {
      kind: 'warn',
      text: 'Recorded as failed. The step stays open: put it right and check again, '
        + 'or call your supervisor.',
    };
  }

  outbox.addEventListener('change', () => { renderPending(); refreshFeedback(); });
  outbox.addEventListener('delivered', ({ detail: { item, session } }) => {
    if (state.server && state.server.id !== item.session_id) return;
    const recorded = session.checks.find((c) => c.id === item.body.check_id);
    applySession(session, { item, recorded });
  });
  outbox.addEventListener('rejected', async ({ detail: { item, error } }) => {
    const phone = shownNow(); // with the refused check, which has left the outbox
    const refusal = explain(error);
    if (state.lastCheck?.body.check_id === item.body.check_id) state.lastCheck = null;
    state.feedback = { kind: 'error', text: refusal };
    let session = null;
    try {
      session = await get(`/sessions/${item.session_id}`);
    } catch {
      // not answering: the kept session without the refused check
    }
    if (session) {
      applySession(session, { item, refusal, phone });
    } else {
      project();
      render();
      const text = disagreement({ phone, service: shownNow(), item, refusal });
      if (text) tell(text);
    }
  });

  function sessionActions(s) {
    let pauseOrResume = null;
    if (s.status === 'in_progress') {
      pauseOrResume = h('button', {
        type: 'button', class: 'secondary', onclick: () => act(() => post(`/sessions/${s.id}/pause`)),
      }, 'Pause');
    } else if (!s.current_step) { // else Resume is the step bar's action
      pauseOrResume = h('button', {
        type: 'button', class: 'primary', onclick: () => act(() => post(`/sessions/${s.id}/resume`)),
      }, 'Resume');
    }
    const messages = h('div', { class: 'action-messages' });
    // Ending the session early is set apart from Pause, below it, and each asks first.
    return h('div', { class: 'session-actions' }, h('h2', { class: 'visually-hidden' }, 'Session actions'),
      messages, pauseOrResume ? h('div', { class: 'actions' }, pauseOrResume) : null,
      h('div', { class: 'session-end', role: 'group', 'aria-labelledby': 'session-end-title' },
        h('p', { id: 'session-end-title', class: 'session-end-title' }, 'End the session early'),
        h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'danger', onclick: () => completeNow(s) },
            'Complete session now'),
          h('button', { type: 'button', class: 'danger', onclick: () => cancel(s) },
            'Cancel session'))));
  }

  async function act(call) {
    if (held) { // a check tapped a moment ago goes first
      commitHeld();
      await outbox.flush();
    }
    try {
      if (outbox.size) await outbox.flush(); // the checks made before come first
      state.feedback = null;
      state.lastCheck = null;
      applySession(await call());
    } catch (error) {
      if (error instanceof ApiError && error.status === 409 && state.session) {
        try {
          applySession(await get(`/sessions/${state.session.id}`));
        } catch {
          // keep what is shown
        }
      }
      const messages = sessionArea.querySelector('.action-messages') || pageMessages;
      notice(messages, 'error', explain(error));
    }
  }

  async function completeNow(s) {
    const remaining = s.current_step ? s.current_step.total - s.current_step.index : 0;
    const answer = await ask({
      title: 'Complete the session now?',
      text: remaining
        ? `${remaining} step${remaining === 1 ? ' has' : 's have'} not been checked. `
          + 'They will be listed as unchecked for your supervisor.'
        : 'Every step has been checked.',
      confirmLabel: 'Complete session now',
      danger: true,
    });
    if (answer) act(() => post(`/sessions/${s.id}/complete`));
  }

  async function cancel(s) {
    const answer = await ask({
      title: 'Cancel this session?',
      text: 'Say why, for your supervisor. A cancelled session cannot be continued.',
      confirmLabel: 'Cancel session',
      danger: true,
      fields: (form) => form.append(field('Reason', h('textarea', {
        name: 'reason', rows: 3, required: true, minlength: 1, maxlength: 500,
      }))),
    });
    if (answer) act(() => post(`/sessions/${s.id}/cancel`, { reason: answer.reason.trim() }));
  }

  function closedCard(s) {
    const checked = new Set(s.checks.filter((c) => c.result === 'passed').map((c) => c.step_id));
    const unchecked = s.unchecked_step_ids?.length || 0;
    const title = s.status === 'completed' ? 'Session completed' : 'Session cancelled';
    const signatures = s.signatures || [];
    const signed = signatures.some((g) => g.meaning === 'performed' && g.signer_id === claims.sub);
    const messages = h('div', { class: 'sign-messages' });
    return h('article', { class: `card closed-card closed-${s.status}` },
      h('h1', { class: 'closed-title', tabindex: '-1' }, title),
      h('p', {}, h('strong', {}, s.sop.title), ` · ${checked.size} step${checked.size === 1 ? '' : 's'} passed`,
        unchecked ? ` · ${unchecked} not checked` : '',
        ' · ', when(s.completed_at || s.cancelled_at)),
      s.cancel_reason ? h('p', {}, `Reason: ${s.cancel_reason}`) : null,
      state.feedback ? h('p', { class: 'muted' }, 'Your supervisor will review and approve it.') : null,
      signatures.length ? [h('h2', { class: 'signatures-title' }, 'Signatures'),
        signatures.map((g) => manifest(g, (id) => state.steps?.find((x) => x.id === id)?.title || 'a step'))] : null,
      messages,
      s.status === 'completed' && !s.locked && !signed ? h('div', { class: 'actions' }, h('button', {
        type: 'button', class: 'primary', onclick: () => signPerformed(s, messages),
      }, 'I performed this')) : null);
  }

  /** The worker's `performed` signature on the session they completed. */
  async function signPerformed(s, messages) {
    const answer = await ask({
      title: 'Sign that you performed this work?',
      text: `Your electronic signature, with the meaning "${MEANINGS.performed.sentence}"`,
      confirmLabel: 'Sign',
      fields: (form) => form.append(statementField(field)),
    });
    if (!answer) return;
    try {
      await sign(s.id, signatureBody('performed', answer));
      await signedNow(s.id);
    } catch (error) {
      notice(messages, 'error', explain(error));
    }
  }

  /** The session with its new signature, shown on the closed card. */
  async function signedNow(sessionId) {
    const session = await get(`/sessions/${sessionId}`);
    state.feedback = null;
    applySession(session, { focus: true });
    const box = sessionArea.querySelector('.sign-messages');
    if (box) notice(box, 'ok', 'Signed: your signature is on the record.');
  }

  /** Back from the provider's sign-in: the signature the worker started, sent once. */
  async function finishSignature(pending) {
    const { signature, error } = await resumeSignature(pending);
    try {
      if (signature) {
        await signedNow(pending.session_id);
        return;
      }
      applySession(await get(`/sessions/${pending.session_id}`), { focus: true });
    } catch {
      // the session cannot be read now: the message below still says what happened
    }
    const box = sessionArea.querySelector('.sign-messages') || pageMessages;
    notice(box, 'error', typeof error === 'string' ? error : explain(error));
  }

  // ---- starting a session --------------------------------------------------------------------

  function renderStart() {
    clear(startArea);
    startArea.removeAttribute('aria-labelledby');
    if (state.session || state.loadError) return;
    startArea.setAttribute('aria-labelledby', 'start-heading');
    const messages = h('div', { class: 'start-messages' });
    // the page's heading, unless a session just closed (its card has the heading then)
    const level = state.closed ? 2 : 1;
    startArea.append(h(`h${level}`, { id: 'start-heading' }, 'Start a session'), messages);
    if (!state.sops.length) {
      startArea.append(h('p', { class: 'muted' }, 'No SOP is ready yet. Ask your supervisor to confirm one.'));
      return;
    }
    startArea.append(h('ul', { class: 'sop-list' }, state.sops.map((sop) => {
      const steps = sop.tasks.reduce((n, t) => n + t.steps.length, 0);
      return h('li', { class: 'card sop-card' },
        h(`h${level + 1}`, {}, sop.title, ' ', h('span', { class: 'muted' }, `v${sop.version}`)),
        sop.description ? h('p', {}, sop.description) : null,
        h('p', { class: 'meta' }, `${sop.tasks.length} task${sop.tasks.length === 1 ? '' : 's'}, `
          + `${steps} step${steps === 1 ? '' : 's'}`),
        h('button', {
          type: 'button', class: 'primary', 'aria-label': `Start ${sop.title}`,
          onclick: (event) => startSession(sop, messages, event.currentTarget),
        }, 'Start'));
    })));
  }

  async function startSession(sop, messages, button) {
    button.disabled = true;
    try {
      const session = await post('/sessions', { sop_id: sop.id });
      state.feedback = null;
      state.lastCheck = null;
      applySession(session, { focus: true });
    } catch (error) {
      button.disabled = false;
      const existing = error instanceof ApiError && error.status === 409
        && error.problem.existing_session_id;
      if (existing) {
        const go = h('button', {
          type: 'button', class: 'primary', onclick: () => continueSession(existing, messages),
        }, 'Continue it');
        notice(messages, 'warn', 'You already have a session in progress: continue it '
          + '(or cancel it) before you start another one.', [go]);
        go.focus();
      } else {
        notice(messages, 'error', explain(error));
      }
    }
  }

  async function continueSession(id, messages) {
    try {
      state.feedback = null;
      state.lastCheck = null;
      applySession(await get(`/sessions/${id}`), { focus: true });
    } catch (error) {
      notice(messages, 'error', explain(error));
    }
  }

  // ---- the pending checks bar --------------------------------------------------------------

  function renderPending() {
    clear(pendingBar);
    const n = outbox.size;
    pendingBar.hidden = n === 0;
    if (!n) return;
    const offline = !navigator.onLine || outbox.lastError;
    const since = outbox.items.map((i) => i.queued_at).sort()[0];
    pendingBar.append(h('p', {},
      h('strong', {}, `${n} check${n === 1 ? '' : 's'} waiting to be sent`),
      since ? [' (kept on this device since ', when(since, { seconds: true }), ')'] : null,
      offline ? ' when the connection returns.' : ': sending…'),
    h('button', { type: 'button', class: 'secondary small', onclick: () => outbox.flush() },
      'Send now'));
  }
  // The bar that says the page shows what this phone kept: no network, or no answer.
  function renderLink() {
    if (!offlineBar) return;
    const down = !navigator.onLine || !state.reached;
    const at = keep.savedAt;
    const seen = at ? `: this is what this device last saw, at ${new Date(at).toLocaleTimeString()}` : '';
    let text = '';
    if (down) {
      text = navigator.onLine
        ? `The service is not answering${seen}. Checks you record are kept here and sent when `
          + 'it answers again.'
        : `No connection${seen}. Checks you record are kept here and sent when the connection `
          + 'returns.';
    }
    offlineBar.hidden = !down;
    if (offlineBar.textContent !== text) offlineBar.textContent = text; // announced once
  }

  setReachHandler((reached) => {
    const back = reached && !state.reached;
    if (reached === state.reached) return;
    state.reached = reached;
    renderLink();
    renderPending();
    refreshFeedback();
    // what changed meanwhile (the outbox sends its checks first); not again at once after a
    // read that half failed (one request refused, the next answered: that would loop)
    if (back && Date.now() - loadedAt > REACH_RELOAD_MS) load();
  });
  window.addEventListener('online', () => { load(); renderLink(); renderPending(); });
  window.addEventListener('offline', () => { renderLink(); renderPending(); refreshFeedback(); });

  // ---- history -----------------------------------------------------------------------------

  async function loadHistory() {
    clear(historyArea);
    historyArea.append(h('h2', { id: 'history-heading' }, 'My sessions'));
    let page;
    try {
      page = await get(`/sessions${query({ limit: HISTORY_PAGE, offset: state.historyOffset })}`);
    } catch (error) {
      historyArea.append(h('p', { class: 'muted' }, `History not available: ${explain(error)}`));
      return;
    }
    clear(historyArea);
    historyArea.append(h('h2', { id: 'history-heading' }, 'My sessions'));
    if (!page.total) {
      historyArea.append(h('p', { class: 'muted' }, 'No sessions yet.'));
      return;
    }
    historyArea.append(h('ul', { class: 'history' }, page.items.map((item) => h('li', {},
      h('span', { class: 'history-title' }, item.sop.title),
      h('span', { class: 'history-meta' }, badge(item.status), item.locked ? lockBadge() : null,
        ' ', when(item.started_at))))));
    const last = Math.min(page.offset + page.items.length, page.total);
    historyArea.append(pager(page.offset + 1, last, page.total, page.offset > 0, last < page.total,
      (delta) => { state.historyOffset = Math.max(0, state.historyOffset + delta * HISTORY_PAGE); loadHistory(); }));
  }

  startUp();
  if (pendingSignature) load().then(() => finishSignature(pendingSignature));
}
