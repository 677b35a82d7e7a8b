// Electronic signatures (CONTRACT.md, "Electronic signatures"): signing, the fresh sign-in a
// signature may need, and a signature's manifest as a person reads it.
//
// A signature needs a sign-in of the last few minutes. When the service answers 401
// reauthentication-required, the signature the person started (session, meaning, step,
// statement) is kept in sessionStorage, the person goes through the provider's sign-in
// (max_age=0), and back here the console sends it without asking again (`resumeSignature`).
import { h } from './dom.js';
import { ApiError, post } from './api.js';
import { shortId } from './ui.js';

const PENDING_KEY = 'worksession.signature.pending';
const PENDING_MAX_MS = 15 * 60 * 1000; // a signature started longer ago is not sent by itself
export const STATEMENT_MAX = 500;

export const MEANINGS = {
  performed: { word: 'Performed', sentence: 'I performed this work as recorded.' },
  verified: { word: 'Verified', sentence: 'I saw this step done and verify it as recorded.' },
  approved: { word: 'Approved', sentence: 'I approve this record as complete and correct.' },
};

let reauthenticate = null; // (pending) => navigates to the provider; null: no provider
let signer = null; // the signed-in person's id: a kept signature is theirs only

/** app.js: how to send the person through the provider again (null: sign-in links only). */
export function setReauthentication(fn, personId) {
  reauthenticate = fn;
  signer = personId;
}

export const needsReauthentication = (error) => error instanceof ApiError && error.status === 401
  && String(error.problem.type || '').endsWith('/reauthentication-required');

/** The words for a 401 reauthentication-required when the console cannot sign in again itself. */
export function reauthenticationText(error) {
  const seconds = Number(error.problem.max_age) || 300;
  const minutes = Math.round(seconds / 60);
  const span = seconds < 120 ? `${seconds} seconds` : `${minutes} minutes`;
  if (reauthenticate) { // back from the provider, and still not fresh
    return `Signing needs a sign-in from the last ${span}, and the sign-in service did not `
      + 'confirm a new one: nothing was recorded. Sign again; if this keeps happening, tell '
      + 'your administrator (the service\'s tokens must carry auth_time).';
  }
  return `Signing needs a sign-in from the last ${span}, and yours is older: nothing was `
    + 'recorded. Sign in again with a fresh sign-in link (ask your supervisor for one), then sign again.';
}

/**
 * Sign session `sessionId`: body { meaning, step_id?, statement? }. Resolves to the signature.
 * On reauthentication-required with a provider, the page leaves for it (and this never
 * resolves); without one it throws, to be told with `reauthenticationText`.
 * `again`: false when finishing a kept signature (no second trip to the provider).
 */
export function sign(sessionId, body, { again = true } = {}) {
  return signed(`/sessions/${sessionId}/signatures`, body, { session_id: sessionId }, again);
}

/**
 * Close nonconformance `ncId`: body { disposition, corrective_action, statement? }, the
 * closer's `approved` signature, under the same rule as `sign`. Resolves to the NC.
 */
export function closeNonconformance(ncId, body, { again = true } = {}) {
  return signed(`/nonconformances/${ncId}/close`, body, { nc_id: ncId }, again);
}

/** POST `path`; on reauthentication-required, `about` (what is signed) is kept for the return. */
async function signed(path, body, about, again) {
  try {
    return await post(path, body);
  } catch (error) {
    if (needsReauthentication(error) && again && reauthenticate) {
      sessionStorage.setItem(PENDING_KEY, JSON.stringify({
        ...about, body, signer, started_at: Date.now(),
      }));
      await reauthenticate();
    }
    throw error;
  }
}

/** The trip to the provider failed (cancelled, refused): the kept signature is not sent. */
export function dropPendingSignature() {
  sessionStorage.removeItem(PENDING_KEY);
}

/**
 * The signature this person started before going through the provider, taken out of the
 * tab's storage (so it is sent once), or null: none, too old, or someone else's (another
 * person signed in at the provider meanwhile).
 */
export function takePendingSignature(personId) {
  let pending = null;
  try {
    pending = JSON.parse(sessionStorage.getItem(PENDING_KEY) || 'null');
  } catch {
    pending = null;
  }
  sessionStorage.removeItem(PENDING_KEY);
  if (!pending || Date.now() - pending.started_at > PENDING_MAX_MS) return null;
  if (pending.signer !== personId) return { ...pending, otherPerson: true };
  return pending;
}

/** Sends a kept signature once: { signature }, { nonconformance } (a closing), or { error }. */
export async function resumeSignature(pending) {
  if (pending.otherPerson) {
    return { error: 'You signed in as someone else than the person who started the signature: '
      + 'it was not sent. Sign it yourself if it is yours to sign.' };
  }
  try {
    if (pending.nc_id) {
      return { nonconformance: await closeNonconformance(pending.nc_id, pending.body, { again: false }) };
    }
    return { signature: await sign(pending.session_id, pending.body, { again: false }) };
  } catch (error) {
    return { error };
  }
}

const signedAt = new Intl.DateTimeFormat(undefined, { dateStyle: 'long', timeStyle: 'long' });

/**
 * A signature's manifest, as 21 CFR 11.50 wants it shown with the record: the printed name of
 * the signer, the date and time of signing with its time zone, the meaning, and the
 * statement. `stepName(id)`: the step a `verified` signature is about.
 */
export function manifest(sig, stepName = (id) => `step ${shortId(id)}`) {
  const meaning = MEANINGS[sig.meaning] || { word: sig.meaning, sentence: '' };
  const at = new Date(sig.signed_at);
  const row = (term, ...value) => h('div', {}, h('dt', {}, term), h('dd', {}, value));
  return h('dl', { class: 'manifest', 'aria-label': `Signature: ${meaning.word} by ${sig.signer_name}` },
    row('Signed by', h('strong', { class: 'manifest-name' }, sig.signer_name),
      ` (${sig.signer_role})`),
    row('Date and time', h('time', { datetime: sig.signed_at, title: at.toISOString() },
      Number.isNaN(at.getTime()) ? sig.signed_at : signedAt.format(at))),
    row('Meaning', `${meaning.word}${sig.step_id ? `, ${stepName(sig.step_id)}` : ''}`,
      meaning.sentence ? h('span', { class: 'muted' }, ` (${meaning.sentence})`) : null),
    sig.statement ? row('Statement', `“${sig.statement}”`) : null);
}

/** The statement field of a signing dialog (at most 500 characters, optional). */
export function statementField(field, hint = 'Optional, up to 500 characters: what you '
  + 'checked, or anything the record should say with your signature.') {
  return field('Statement', h('textarea', { name: 'statement', rows: 3, maxlength: STATEMENT_MAX }), hint);
}

/** The body of a signing request: the statement only when one was written. */
export function signatureBody(meaning, answer, extra = {}) {
  const statement = (answer?.statement || '').trim();
  return { meaning, ...extra, ...(statement ? { statement } : {}) };
}
