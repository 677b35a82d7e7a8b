// Checks kept on the device until the service has them.
//
// Every check is written here first (localStorage, so it survives a reload or a closed tab)
// with the `check_id` the page chose, then sent. A check whose answer never arrives (offline,
// timed out, 503) stays and is sent again on the `online` event, on a timer and when the page
// comes back to the foreground. Sending it twice is safe: the API records a repeated
// `check_id` once and answers with the session as it is now.
import { post } from './api.js';

const RETRY_MS = 5000;

export class Outbox extends EventTarget {
  constructor(userId) {
    super();
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

  add(sessionId, body, label) {
    const item = { session_id: sessionId, body, label, queued_at: new Date().toISOString() };
    this.items.push(item);
    this.save();
    return item;
  }

  remove(item) {
    this.items = this.items.filter((i) => i.body.check_id !== item.body.check_id);
    this.save();
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
        const session = await post(`/sessions/${item.session_id}/checks`, item.body);
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
