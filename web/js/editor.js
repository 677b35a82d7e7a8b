// The SOP editor: tasks, steps and their checks as a form; save as draft, then confirm.
import { h, clear, uid } from './dom.js';
import { ApiError, describe, get, post, put } from './api.js';
import { ask, badge, notice, rangeText, when } from './ui.js';

const blankStep = () => ({
  title: '', instructions: '', check: {
    kind: 'confirm', prompt: '', unit: '', min: '', max: '', evidence: 'optional',
    on_fail: 'retry', severity: 'major',
  },
});
// A step's check.evidence (CONTRACT.md, "Evidence files"): which checks need a photo or file.
const EVIDENCE = [
  ['none', 'None (no file)'],
  ['optional', 'Optional'],
  ['required', 'Required'],
  ['required_on_fail', 'Required on a failed check'],
];
// A step's check.on_fail and check.severity (CONTRACT.md, "Nonconformances").
const ON_FAIL = [
  ['retry', 'The worker tries again'],
  ['nonconformance', 'Open a nonconformance (the worker may try again)'],
  ['hold', 'Open a nonconformance and stop until a supervisor contains it'],
];
const SEVERITY = [['minor', 'Minor'], ['major', 'Major'], ['critical', 'Critical']];
const EVIDENCE_SAID = {
  required: 'photo or file required', required_on_fail: 'photo or file required on a failed check',
};
const blankTask = () => ({ title: '', steps: [blankStep()] });
// Which task or step a button acts on, for a screen reader: its name is the visible words
// and then this ("Move up task 2"), so a person who says what they see reaches it.
const which = (text) => h('span', { class: 'visually-hidden' }, ` ${text}`);

function fromSop(sop) {
  return {
    id: sop.id,
    version: sop.version,
    status: sop.status,
    title: sop.title,
    description: sop.description || '',
    tasks: sop.tasks.map((t) => ({
      title: t.title,
      steps: t.steps.map((s) => ({
        title: s.title,
        instructions: s.instructions || '',
        check: {
          kind: s.check.kind,
          prompt: s.check.prompt,
          unit: s.check.unit || '',
          min: s.check.min == null ? '' : String(s.check.min),
          max: s.check.max == null ? '' : String(s.check.max),
          evidence: s.check.evidence || 'optional',
          on_fail: s.check.on_fail || 'retry',
          severity: s.check.severity || 'major',
        },
      })),
    })),
  };
}

/** The request body, and the mistakes a person can be told about before sending it. */
function toBody(model) {
  const problems = [];
  const need = (value, path, what) => {
    if (!value.trim()) problems.push({ field: path, message: `${what} is required` });
    return value.trim();
  };
  const number = (value, path, what) => {
    if (String(value).trim() === '') return null;
    const n = Number(value);
    if (!Number.isFinite(n)) problems.push({ field: path, message: `${what} must be a number` });
    return n;
  };
  const body = {
    title: need(model.title, 'title', 'The SOP title'),
    description: model.description.trim() || null,
    tasks: model.tasks.map((t, ti) => ({
      title: need(t.title, `tasks.${ti}.title`, `Task ${ti + 1}: the title`),
      steps: t.steps.map((s, si) => {
        const where = `tasks.${ti}.steps.${si}`;
        const name = `Step ${ti + 1}.${si + 1}`;
        const title = need(s.title, `${where}.title`, `${name}: the title`);
        const check = {
          kind: s.check.kind,
          prompt: need(s.check.prompt, `${where}.check.prompt`, `${name}: what to check`),
          evidence: s.check.evidence || 'optional',
          on_fail: s.check.on_fail || 'retry',
          severity: s.check.severity || 'major',
        };
        if (s.check.kind === 'measurement') {
          check.unit = s.check.unit.trim() || null;
          check.min = number(s.check.min, `${where}.check.min`, `${name}: the minimum`);
          check.max = number(s.check.max, `${where}.check.max`, `${name}: the maximum`);
          if (check.min != null && check.max != null && check.min > check.max) {
            problems.push({ field: `${where}.check.max`, message: `${name}: the maximum is below the minimum` });
          }
        }
        return {
          title,
          instructions: s.instructions.trim() || null,
          check,
        };
      }),
    })),
  };
  return { body, problems };
}

export function mountSopEditor(root, { onChange, onStats }) {
  // ---- the list --------------------------------------------------------------------------

  async function showList(message) {
    clear(root);
    const messages = h('div');
    root.append(h('div', { class: 'title-row' }, h('h1', {}, 'SOPs'),
      h('button', { type: 'button', class: 'primary', onclick: () => edit(null) }, 'New SOP')), messages);
    if (message) notice(messages, 'ok', message);
    let page;
    try {
      page = await get('/sops?limit=100');
    } catch (error) {
      notice(messages, 'error', describe(error));
      return;
    }
    if (!page.items.length) {
      root.append(h('p', { class: 'muted' }, 'No SOP yet: start with "New SOP".'));
      return;
    }
    root.append(h('ul', { class: 'sop-list' }, page.items.map((sop) => h('li', { class: 'card sop-card' },
      h('h2', {}, sop.title, ' ', h('span', { class: 'muted' }, `v${sop.version}`)),
      h('p', { class: 'meta' }, badge(sop.status), ' Updated ', when(sop.updated_at)),
      h('div', { class: 'actions' },
        sop.status === 'draft'
          ? h('button', { type: 'button', class: 'secondary', onclick: () => edit(sop), 'aria-label': `Edit ${sop.title}` }, 'Edit')
          : [h('button', { type: 'button', class: 'secondary', onclick: () => view(sop), 'aria-label': `View ${sop.title}` }, 'View'),
            h('button', { type: 'button', class: 'secondary', onclick: () => onStats(sop, showList), 'aria-label': `Statistics of ${sop.title} v${sop.version}` }, 'Statistics')])))));
    if (page.total > page.items.length) {
      root.append(h('p', { class: 'hint' }, `Showing the first ${page.items.length} of ${page.total}.`));
    }
  }

  // ---- a confirmed SOP, read only ------------------------------------------------------------

  function view(sop, message) {
    clear(root);
    const messages = h('div');
    root.append(
      h('button', { type: 'button', class: 'secondary small back', onclick: () => showList() },
        h('span', { 'aria-hidden': 'true' }, '← '), 'All SOPs'),
      h('h1', { id: 'sop-title', tabindex: '-1' }, sop.title, ' ', h('span', { class: 'muted' }, `v${sop.version}`)),
      // "Confirmed" once: the badge says it, the date follows
      h('p', { class: 'meta' }, badge(sop.status), sop.confirmed_at
        ? [sop.status === 'confirmed' ? ' since ' : ' · confirmed ', when(sop.confirmed_at)] : null),
      messages,
      sop.description ? h('p', {}, sop.description) : null,
      h('ol', { class: 'sop-outline' }, sop.tasks.map((t) => h('li', {}, h('h2', {}, t.title),
        h('ol', {}, t.steps.map((s) => h('li', {}, h('strong', {}, s.title),
          s.instructions ? h('p', {}, s.instructions) : null,
          h('p', { class: 'muted' }, s.check.kind === 'measurement'
            ? `Measure: ${s.check.prompt}${rangeText(s.check) ? ` (allowed ${rangeText(s.check)})` : ''}`
            : `Confirm: ${s.check.prompt}`,
          EVIDENCE_SAID[s.check.evidence] ? ` · ${EVIDENCE_SAID[s.check.evidence]}` : ''))))))),
      sop.status === 'confirmed' ? h('div', { class: 'actions' }, h('button', {
        type: 'button', class: 'secondary',
        onclick: async () => {
          try {
            const draft = await post(`/sops/${sop.id}/revisions`);
            edit(draft, `Version ${draft.version} is a new draft: change it, then confirm it.`);
          } catch (error) {
            notice(messages, 'error', describe(error));
          }
        },
      }, 'Start a new revision')) : null);
    if (message) notice(messages, 'ok', message);
    root.querySelector('#sop-title').focus();
  }

  // ---- the editor ----------------------------------------------------------------------------

  function edit(sop, message) {
    const model = sop ? fromSop(sop) : {
      id: null, version: 1, status: 'draft', title: '', description: '', tasks: [blankTask()],
    };
    let dirty = false;
    clear(root);
    const messages = h('div', { class: 'messages' });
    const form = h('form', { class: 'sop-editor', novalidate: true, 'aria-labelledby': 'editor-title' });
    root.append(
      h('button', { type: 'button', class: 'secondary small back', onclick: () => leave() },
        h('span', { 'aria-hidden': 'true' }, '← '), 'All SOPs'),
      h('h1', { id: 'editor-title', tabindex: '-1' },
        model.id ? `Edit draft: ${model.title} (v${model.version})` : 'New SOP'),
      messages, form);
    if (message) notice(messages, 'ok', message);

    async function leave() {
      if (dirty) {
        const ok = await ask({ title: 'Leave without saving?', text: 'Your changes are not saved.', confirmLabel: 'Leave', danger: true });
        if (!ok) return;
      }
      showList();
    }

    function input(tag, path, get, set, attrs = {}) {
      const el = h(tag, { ...attrs, value: get(), dataset: { field: path } });
      el.addEventListener('input', () => {
        set(el.value);
        dirty = true;
        el.removeAttribute('aria-invalid');
        recheck(path);
      });
      return el;
    }

    function labelled(text, control, hint) {
      const id = uid('sop');
      control.id = id;
      let hintEl = null;
      if (hint) {
        hintEl = h('p', { class: 'hint', id: `${id}-hint` }, hint);
        control.setAttribute('aria-describedby', hintEl.id);
      }
      return h('div', { class: 'field' }, h('label', { for: id }, text), control, hintEl);
    }

    function draw(focusPath) {
      clear(form);
      form.append(
        labelled('SOP title', input('input', 'title', () => model.title, (v) => { model.title = v; },
          { type: 'text', required: true, maxlength: 200 })),
        labelled('Description', input('textarea', 'description', () => model.description,
          (v) => { model.description = v; }, { rows: 2, maxlength: 5000 })),
      );
      model.tasks.forEach((task, ti) => form.append(taskFieldset(task, ti)));
      form.append(h('button', {
        type: 'button', class: 'secondary',
        onclick: () => { model.tasks.push(blankTask()); dirty = true; draw(`tasks.${model.tasks.length - 1}.title`); },
      }, 'Add task'));
      form.append(h('div', { class: 'actions sticky-actions' },
        h('button', { type: 'submit', class: 'secondary', value: 'save' }, 'Save draft'),
        h('button', { type: 'button', class: 'primary', onclick: () => confirmSop() }, 'Confirm SOP')));
      recheck();
      if (focusPath) form.querySelector(`[data-field="${focusPath}"]`)?.focus();
    }

    function move(list, index, delta) {
      const to = index + delta;
      if (to < 0 || to >= list.length) return;
      [list[index], list[to]] = [list[to], list[index]];
      dirty = true;
    }

    function taskFieldset(task, ti) {
      const name = `Task ${ti + 1}`;
      return h('fieldset', { class: 'task' },
        h('legend', {}, name),
        labelled('Task title', input('input', `tasks.${ti}.title`, () => task.title, (v) => { task.title = v; },
          { type: 'text', required: true, maxlength: 200 })),
        task.steps.map((step, si) => stepFieldset(task, step, ti, si)),
        h('div', { class: 'actions' },
          h('button', {
            type: 'button', class: 'secondary small',
            onclick: () => { task.steps.push(blankStep()); dirty = true; draw(`tasks.${ti}.steps.${task.steps.length - 1}.title`); },
          }, `Add step to task ${ti + 1}`),
          model.tasks.length > 1 ? [
            h('button', { type: 'button', class: 'secondary small', disabled: ti === 0,
              onclick: () => { move(model.tasks, ti, -1); draw(`tasks.${ti - 1}.title`); } }, 'Move up', which(`task ${ti + 1}`)),
            h('button', { type: 'button', class: 'secondary small', disabled: ti === model.tasks.length - 1,
              onclick: () => { move(model.tasks, ti, 1); draw(`tasks.${ti + 1}.title`); } }, 'Move down', which(`task ${ti + 1}`)),
            h('button', { type: 'button', class: 'danger small',
              onclick: () => { model.tasks.splice(ti, 1); dirty = true; draw('title'); } }, 'Remove task', which(`${ti + 1}`)),
          ] : null));
    }

    function stepFieldset(task, step, ti, si) {
      const where = `tasks.${ti}.steps.${si}`;
      const label = `${ti + 1}.${si + 1}`;
      const kind = h('select', { dataset: { field: `${where}.check.kind` } },
        h('option', { value: 'confirm', selected: step.check.kind === 'confirm' }, 'Confirm (passed or failed)'),
        h('option', { value: 'measurement', selected: step.check.kind === 'measurement' }, 'Measurement (a number)'));
      kind.addEventListener('change', () => {
        step.check.kind = kind.value;
        dirty = true;
        draw(`${where}.check.kind`);
      });
      const evidence = h('select', { dataset: { field: `${where}.check.evidence` } },
        EVIDENCE.map(([value, text]) => h('option', {
          value, selected: (step.check.evidence || 'optional') === value,
        }, text)));
      evidence.addEventListener('change', () => {
        step.check.evidence = evidence.value;
        dirty = true;
      });
      const choice = (name, options, fallback) => {
        const select = h('select', { dataset: { field: `${where}.check.${name}` } },
          options.map(([value, text]) => h('option', {
            value, selected: (step.check[name] || fallback) === value,
          }, text)));
        select.addEventListener('change', () => { step.check[name] = select.value; dirty = true; });
        return select;
      };
      const measurement = step.check.kind === 'measurement' ? h('div', { class: 'row-3' },
        labelled('Unit', input('input', `${where}.check.unit`, () => step.check.unit, (v) => { step.check.unit = v; },
          { type: 'text', maxlength: 32, autocomplete: 'off' })),
        labelled('Minimum', input('input', `${where}.check.min`, () => step.check.min, (v) => { step.check.min = v; },
          { type: 'number', step: 'any', inputmode: 'decimal' })),
        labelled('Maximum', input('input', `${where}.check.max`, () => step.check.max, (v) => { step.check.max = v; },
          { type: 'number', step: 'any', inputmode: 'decimal' }))) : null;
      return h('fieldset', { class: 'step' },
        h('legend', {}, `Step ${label}`),
        labelled('Step title', input('input', `${where}.title`, () => step.title, (v) => { step.title = v; },
          { type: 'text', required: true, maxlength: 200 })),
        labelled('Instructions', input('textarea', `${where}.instructions`, () => step.instructions,
          (v) => { step.instructions = v; }, { rows: 2, maxlength: 5000 })),
        labelled('Check', kind),
        labelled('What to check', input('input', `${where}.check.prompt`, () => step.check.prompt,
          (v) => { step.check.prompt = v; }, { type: 'text', required: true, maxlength: 500 }),
        step.check.kind === 'measurement' ? 'The worker enters a number; outside the range it fails.'
          : 'The worker answers Passed or Failed.'),
        measurement,
        labelled('Evidence', evidence, 'A photo or PDF the worker adds to the check: '
          + '"Required on a failed check" asks for one when the check fails.'),
        labelled('When the check fails', choice('on_fail', ON_FAIL, 'retry')),
        labelled('Severity of its nonconformance', choice('severity', SEVERITY, 'major')),
        task.steps.length > 1 ? h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'secondary small', disabled: si === 0,
            onclick: () => { move(task.steps, si, -1); draw(`tasks.${ti}.steps.${si - 1}.title`); } }, 'Move up', which(`step ${label}`)),
          h('button', { type: 'button', class: 'secondary small', disabled: si === task.steps.length - 1,
            onclick: () => { move(task.steps, si, 1); draw(`tasks.${ti}.steps.${si + 1}.title`); } }, 'Move down', which(`step ${label}`)),
          h('button', { type: 'button', class: 'danger small',
            onclick: () => { task.steps.splice(si, 1); dirty = true; draw(`tasks.${ti}.title`); } }, 'Remove step', which(label)))
          : null);
    }

    // The problems on screen: { box, local, problems: [{ field, message, item }] }. `local`:
    // found here before sending (toBody), so an edit can tell which are put right.
    let shown = null;

    function showProblems(list, intro, { local = false } = {}) {
      const problems = list.map((p) => {
        const path = String(p.field || '').replace(/^body\./, '');
        const target = form.querySelector(`[data-field="${path}"]`);
        const item = h('li', {}, target ? h('button', {
          type: 'button', class: 'link', onclick: () => form.querySelector(`[data-field="${path}"]`)?.focus(),
        }, p.message) : `${path}: ${p.message}`);
        return { field: path, message: p.message, item };
      });
      const box = h('div', { class: 'notice notice-error', role: 'alert' },
        h('p', {}, intro), problems.length ? h('ul', {}, problems.map((p) => p.item)) : null);
      clear(messages).append(box);
      shown = { box, local, problems };
      markInvalid();
      messages.querySelector('button')?.focus();
    }

    function markInvalid() {
      form.querySelectorAll('[aria-invalid]').forEach((el) => el.removeAttribute('aria-invalid'));
      for (const p of shown?.problems || []) {
        form.querySelector(`[data-field="${p.field}"]`)?.setAttribute('aria-invalid', 'true');
      }
    }

    /**
     * After an edit (of the field at `path`), the problems put right leave the list, and the
     * list leaves the screen once none is left: no stale "is required" after the fix.
     */
    function recheck(path) {
      if (!shown) return;
      if (!messages.contains(shown.box)) { // another message took its place
        shown = null;
        return;
      }
      const still = shown.local
        ? new Set(toBody(model).problems.map((p) => `${p.field}\n${p.message}`))
        : null;
      const fixed = shown.problems.filter((p) => (still
        ? !still.has(`${p.field}\n${p.message}`) : p.field === path));
      if (!fixed.length) {
        markInvalid();
        return;
      }
      fixed.forEach((p) => p.item.remove());
      shown.problems = shown.problems.filter((p) => !fixed.includes(p));
      if (!shown.problems.length) {
        clear(messages);
        shown = null;
      }
      markInvalid();
    }

    /** Saves the draft; the SOP as the API returned it, or null (the problem is shown). */
    async function save() {
      const { body, problems } = toBody(model);
      if (problems.length) {
        showProblems(problems, 'Some fields need attention before the SOP can be saved:', { local: true });
        return null;
      }
      try {
        const sop = model.id ? await put(`/sops/${model.id}`, body) : await post('/sops', body);
        Object.assign(model, fromSop(sop));
        dirty = false;
        onChange(sop);
        root.querySelector('#editor-title').textContent = `Edit draft: ${sop.title} (v${sop.version})`;
        return sop;
      } catch (error) {
        if (error instanceof ApiError && error.status === 422 && Array.isArray(error.problem.errors)) {
          showProblems(error.problem.errors, describe(error));
        } else {
          notice(messages, 'error', error instanceof ApiError && error.status === 409
            ? `This SOP can no longer be changed: ${error.problem.detail}` : describe(error));
        }
        return null;
      }
    }

    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const sop = await save();
      if (sop) notice(messages, 'ok', `Saved as a draft (version ${sop.version}). Workers see it once it is confirmed.`);
    });

    async function confirmSop() {
      const sop = (dirty || !model.id) ? await save() : { id: model.id, title: model.title };
      if (!sop) return;
      const ok = await ask({
        title: 'Confirm this SOP?',
        text: 'Workers can then start sessions from it, and it can no longer be changed '
          + '(later changes go into a new revision).',
        confirmLabel: 'Confirm SOP',
      });
      if (!ok) {
        notice(messages, 'info', 'Saved as a draft; not confirmed.');
        return;
      }
      try {
        const confirmed = await post(`/sops/${sop.id}/confirm`);
        onChange(confirmed);
        view(confirmed, 'Done: workers can now start sessions from this SOP.');
      } catch (error) {
        notice(messages, 'error', describe(error));
      }
    }

    draw();
    root.querySelector('#editor-title').focus();
  }

  showList();
}
