// Shared pieces: notices, a modal dialog, badges and formatting.
import { h, clear, uid } from './dom.js';

const STATUS_WORDS = {
  in_progress: 'In progress', paused: 'Paused', completed: 'Completed', cancelled: 'Cancelled',
  draft: 'Draft', confirmed: 'Confirmed', archived: 'Archived',
  passed: 'Passed', failed: 'Failed',
};

export const statusWord = (status) => STATUS_WORDS[status] || status;

export function badge(status, text) {
  return h('span', { class: `badge badge-${status}` }, text || statusWord(status));
}

const SVG = 'http://www.w3.org/2000/svg';

/** A small padlock drawn in SVG (no icon font or emoji font is needed). */
function lockIcon() {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 16 16');
  svg.setAttribute('class', 'icon');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  const body = document.createElementNS(SVG, 'rect');
  Object.entries({ x: 2.5, y: 7, width: 11, height: 8, rx: 1.5 }).forEach(([k, v]) => body.setAttribute(k, v));
  const shackle = document.createElementNS(SVG, 'path');
  shackle.setAttribute('d', 'M5 7V5a3 3 0 0 1 6 0v2');
  shackle.setAttribute('fill', 'none');
  shackle.setAttribute('stroke', 'currentColor');
  shackle.setAttribute('stroke-width', '1.8');
  svg.append(shackle, body);
  return svg;
}

export function lockBadge() {
  return h('span', { class: 'badge badge-locked' }, lockIcon(), 'Locked');
}

/**
 * A message in `container` (replacing what was there). kind: error | info | ok | warn.
 * Errors are announced at once (role=alert), the rest politely (role=status).
 */
export function notice(container, kind, text, actions = []) {
  clear(container);
  if (!text) return null;
  const box = h('div', { class: `notice notice-${kind}`, role: kind === 'error' || kind === 'warn' ? 'alert' : 'status' },
    h('p', {}, text),
    actions.length ? h('div', { class: 'notice-actions' }, actions) : null);
  container.append(box);
  return box;
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const timeOnly = new Intl.DateTimeFormat(undefined, { timeStyle: 'medium' });

export function when(iso, { seconds = false } = {}) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const sameDay = d.toDateString() === new Date().toDateString();
  const text = seconds && sameDay ? timeOnly.format(d) : dateTime.format(d);
  return h('time', { datetime: iso, title: d.toISOString() }, text);
}

/** "2.4 MB", "180 KB": a file's size for a person. */
export function fileSize(bytes) {
  if (bytes >= 1024 * 1024) return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
  return `${Math.max(1, Math.round(bytes / 1024))} KB`;
}

export const shortId = (id) => (id ? String(id).slice(0, 8) : '');

export function duration(seconds) {
  const s = Math.round(seconds || 0);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/**
 * A measurement as the worker typed it: `{value}`, or `{error}` (a sentence to show; nothing
 * is sent). A comma or a point is the decimal separator, whatever the locale: `0,3` is 0.3,
 * never 3 (a number field read `0,3` as 3). No thousands separators: `1.234,5` is refused,
 * and so is `1,234` where the locale groups thousands with a comma (`1.234` where it groups
 * with a point), since either reading could be meant. The step's unit may follow (`0.3 V`);
 * another unit is refused.
 */
export function readMeasurement(raw, unit, locale = navigator.language) {
  let text = String(raw).trim().replace(/\u2212/g, '-');
  const example = 'for example 0.3 or 0,3';
  if (text === '') return { error: `Enter the value you measured, ${example}.` };
  const typedUnit = text.match(/^(.*?[\d.,])\s*([^\d\s.,+-].*)$/);
  if (typedUnit) {
    if (!unit || typedUnit[2].toLowerCase() !== unit.toLowerCase()) {
      return { error: `"${typedUnit[2]}" is not this step's unit${unit ? ` (${unit})` : ''}: `
        + `enter the number only, ${example}.` };
    }
    text = typedUnit[1].trim();
  }
  if (!/^[+-]?(\d+([.,]\d*)?|[.,]\d+)$/.test(text)) {
    return { error: `"${raw}" is not a number this page can read: write digits with one `
      + `decimal comma or point and no thousands separators, ${example}.` };
  }
  const group = new Intl.NumberFormat(locale).formatToParts(12345).find((p) => p.type === 'group');
  if (group && /^[+-]?\d{1,3}[.,]\d{3}$/.test(text) && text.includes(group.value)) {
    return { error: `"${text}" could be read two ways here: write it without a thousands `
      + `separator, as ${text.replace(group.value, group.value === ',' ? '.' : ',')} or `
      + `${text.replace(group.value, '')}.` };
  }
  const value = Number(text.replace(',', '.'));
  return Number.isFinite(value) ? { value } : { error: `Enter a number, ${example}.` };
}

export function formatNumber(value) {
  return typeof value === 'number' ? String(Number(value.toPrecision(12))) : '';
}

/** "0 – 0.5 V", "at least 3 bar", "at most 40 °C", "" */
export function rangeText(check) {
  const unit = check.unit ? ` ${check.unit}` : '';
  const { min, max } = check;
  if (min != null && max != null) return `${formatNumber(min)} – ${formatNumber(max)}${unit}`;
  if (min != null) return `at least ${formatNumber(min)}${unit}`;
  if (max != null) return `at most ${formatNumber(max)}${unit}`;
  return '';
}

/**
 * A modal dialog. `fields(form)` adds the inputs; resolves to the form's values, or null
 * when the person cancels (button, Escape).
 */
export function ask({
  title, text, fields, confirmLabel = 'OK', cancelLabel = 'Back', danger = false,
}) {
  const titleId = uid('dialog-title');
  const dialog = h('dialog', { class: 'dialog', 'aria-labelledby': titleId });
  const form = h('form', { method: 'dialog' });
  form.append(h('h2', { id: titleId }, title));
  if (text) form.append(h('p', {}, text));
  if (fields) fields(form);
  form.append(h('div', { class: 'actions' },
    h('button', { type: 'submit', value: 'cancel', formnovalidate: true, class: 'secondary' }, cancelLabel),
    h('button', { type: 'submit', value: 'ok', class: danger ? 'danger' : 'primary' }, confirmLabel)));
  dialog.append(form);
  document.body.append(dialog);
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      const ok = dialog.returnValue === 'ok';
      const values = ok ? Object.fromEntries(new FormData(form)) : null;
      dialog.remove();
      resolve(values);
    });
    dialog.showModal();
  });
}

/**
 * A label + control pair; the control gets an id, the label points at it. A hint is tied to
 * the control with aria-describedby, shown under it (or above it: hintFirst).
 */
export function field(labelText, control, hint, { hintFirst = false } = {}) {
  const id = control.id || uid('f');
  control.id = id;
  let hintEl = null;
  if (hint) {
    hintEl = h('p', { class: 'hint', id: `${id}-hint` }, hint);
    control.setAttribute('aria-describedby', hintEl.id);
  }
  const label = h('label', { for: id }, labelText);
  return h('div', { class: 'field' }, label, hintFirst ? [hintEl, control] : [control, hintEl]);
}

/** Previous / next for a paged list. */
export function pager(first, last, total, hasPrev, hasNext, move) {
  return h('nav', { class: 'pager', 'aria-label': 'Pages' },
    h('button', { type: 'button', class: 'secondary small', disabled: !hasPrev, onclick: () => move(-1) },
      'Previous'),
    h('span', { role: 'status' }, `${first}–${last} of ${total}`),
    h('button', { type: 'button', class: 'secondary small', disabled: !hasNext, onclick: () => move(1) },
      'Next'));
}

/**
 * The instants a "from" and a "to" day (YYYY-MM-DD, either may be '') stand for, in the
 * browser's own time zone: from the start of "from" to the end of "to", that day included.
 * Every date filter of the console goes through here, so "to today" means today everywhere.
 */
export function dayRange(from, to) {
  const start = (day, plusDays = 0) => {
    const [y, m, d] = day.split('-').map(Number);
    return new Date(y, m - 1, d + plusDays).toISOString();
  };
  const day = /^\d{4}-\d{2}-\d{2}$/;
  return { after: day.test(from) ? start(from) : '', before: day.test(to) ? start(to, 1) : '' };
}

/** A person as the console shows them: their name, else the start of their id. */
export function personName(name, id) {
  return name || (id ? `ID ${shortId(id)}` : 'unknown');
}
