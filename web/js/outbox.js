// Checks kept on the device until the service has them.
//
// Every check is written here first (localStorage, so it survives a reload or a closed tab)
// with the `check_id` the page chose, then sent. A check whose answer never arrives (offline,
// timed out, 503) stays and is sent again on the `online` event, on a timer and when the page
// comes back to the foreground. Sending it twice is safe: the API records a repeated
// `check_id` once and answers with the session as it is now.
//
// A check with evidence files carries their names (`files`: [{ id, name, type, bytes }]); the
// bytes wait in IndexedDB (files.js). Sending it uploads each file first (POST
// /sessions/{id}/evidence, the file as the body), notes the id the service gave it
// (`uploaded`, kept here, so a reload does not upload it again), then sends the check with
// `evidence_ids`. An upload repeated after a lost answer is safe too: the same bytes to the
// same session answer with the same id. The files leave IndexedDB once the check is
// delivered, or refused; a file the service refuses (413 too large, 415 not a photo or PDF)
// is a refusal of the check, which is then not sent.
import { ApiError, post, upload } from './api.js';
import { getFile, removeCheck, sweep } from './files.js';

const RETRY_MS = 5000;

export class Outbox extends EventTarget {
  constructor(userId) {
    super();
    this.userId = userId;
    this.key = `worksession.outbox.${userId}`;
    this.items = this.load();
    this.sending = null;
    this.lastError = null;
  }

  load() {
    try {
      const items = JSON.parse(localStorage.getItem(this.key) || '[]');
      return Array.isArray(items) ? items : [];
    } catch {
      return [];
    }
  }

  save() {
    localStorage.setItem(this.key, JSON.stringify(this.items));
    this.dispatchEvent(new Event('change'));
  }

  get size() { return this.items.length; }

  pendingFor(sessionId, stepId) {
    return this.items.find((i) => i.session_id === sessionId && i.body.step_id === stepId);
  }

  /** `files`: the evidence files kept for it in IndexedDB (files.js), [{ id, name, type, bytes }]. */
  add(sessionId, body, label, files = []) {
    const item = { session_id: sessionId, body, label, queued_at: new Date().toISOString() };
    if (files.length) Object.assign(item, { files, uploaded: {} });
    this.items.push(item);
    this.save();
    return item;
  }

  remove(item) {
    this.items = this.items.filter((i) => i.body.check_id !== item.body.check_id);
    this.save();
    if (item.files?.length) removeCheck(item.body.check_id).catch(() => {}); // swept later
  }

  /** The check's files uploaded (once each), then the check with their ids. */
  async deliver(item) {
    const ids = [];
    for (const file of item.files || []) {
      let id = item.uploaded?.[file.id];
      if (!id) {
        let blob;
        try {
          blob = await getFile(item.body.check_id, file.id);
        } catch {
          blob = null;
        }
        if (!blob) throw new FileLost(file);
        const name = file.name ? `?filename=${encodeURIComponent(file.name.slice(0, 255))}` : '';
        let kept;
        try {
          kept = await upload(`/sessions/${item.session_id}/evidence${name}`, blob);
        } catch (error) {
          const said = fileRefusal(error, file.name);
          if (said) error.sentence = said;
          throw error;
        }
        id = kept.id;
        item.uploaded = { ...item.uploaded, [file.id]: id };
        this.save(); // the same object as in this.items: the id is kept across a reload
      }
      if (!ids.includes(id)) ids.push(id); // the same bytes picked twice are one file
    }
    const body = ids.length ? { ...item.body, evidence_ids: ids } : item.body;
    return post(`/sessions/${item.session_id}/checks`, body);
  }

  /** Send what is waiting, oldest first; stops at the first transient failure. */
  flush() {
    if (this.stopped) return Promise.resolve();
    if (!this.sending) {
      this.sending = this.sendAll().finally(() => { this.sending = null; });
    }
    return this.sending;
  }

  async sendAll() {
    for (const item of [...this.items]) {
      try {
        const session = await this.deliver(item);
        this.lastError = null;
        // Told before it leaves the box, in the same task: the page keeps the service's
        // answer (keep.js) first, so no reload finds the check in neither place.
        this.dispatchEvent(new CustomEvent('delivered', { detail: { item, session } }));
        this.remove(item);
      } catch (error) {
        if (error.transient || error.status === 401) {
          // Kept for later: unreachable, busy, or the sign-in ran out (the check is not lost).
          this.lastError = error;
          this.dispatchEvent(new Event('change'));
          return;
        }
        // The service looked at it and said no (e.g. the step was already done elsewhere):
        // sending it again would not change that. Tell the page and drop it.
        this.remove(item);
        this.dispatchEvent(new CustomEvent('rejected', { detail: { item, error } }));
      }
    }
  }

  start() {
    // files of checks no longer here (picked a day ago, then the page closed before the
    // check was made)
    sweep(this.userId, new Set(this.items.map((i) => i.body.check_id))).catch(() => {});
    window.addEventListener('online', () => this.flush());
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible' && this.size) this.flush();
    });
    this.timer = setInterval(() => { if (this.size) this.flush(); }, RETRY_MS);
    if (this.size) this.flush();
  }

  stop() {
    this.stopped = true;
    clearInterval(this.timer);
  }
}

/** A file of a waiting check is no longer on the device (the browser cleared its storage). */
export class FileLost extends Error {
  constructor(file) {
    super(`The file ${file.name ? `"${file.name}" ` : ''}kept for this check is no longer on `
      + 'this phone (its storage was cleared): the check was not sent. Take the photo again '
      + 'and record the check again.');
    this.sentence = this.message;
  }
}

/** An upload the service refused: what the worker can do about it. */
export function fileRefusal(error, name) {
  if (!(error instanceof ApiError)) return null;
  const what = name ? `"${name}"` : 'The file';
  if (error.status === 415) {
    return `${what} is not a photo or PDF the service takes (JPEG, PNG, WebP, HEIC or PDF), `
      + 'so the check was not sent. Take the photo again or choose another file, then record '
      + 'the check again.';
  }
  if (error.status === 413) {
    return `${what} is too large for the service, so the check was not sent. Take a smaller `
      + 'photo or choose a smaller file, then record the check again.';
  }
  return null;
}
