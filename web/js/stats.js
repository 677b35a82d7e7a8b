// One SOP version's statistics: how its sessions went, and per step the time it takes
// (median and p90) and how often the first check passes, drawn as inline SVG with the same
// figures in a table for screen readers and for copying.
import { h, clear, uid } from './dom.js';
import { describe, get, query } from './api.js';
import { dayRange, duration, field, notice } from './ui.js';
import { showSpcChart } from './spc.js';

const SVG = 'http://www.w3.org/2000/svg';

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, String(v));
  for (const c of children.flat()) if (c != null) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const clip = (text, n) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);
const percent = (rate) => (rate == null ? '–' : `${Math.round(rate * 100)} %`);
// short steps need the tenths: "0.4 s", not "0 s"
const seconds = (x) => (x == null ? '–' : x < 10 ? `${x.toFixed(1)} s` : duration(x));

/**
 * Horizontal bars, one row per step: the step's title above its bars and their figures below
 * them, so that each keeps the whole width on a phone. `bars(step)` gives [{value, cls,
 * label}] drawn from 0. `width` is the width it is shown at: one user unit is one CSS pixel,
 * so its 14 px text is 14 px on a phone and on a desktop alike.
 */
function barChart({ title, summary, steps, max, bars, className, width }) {
  const BAR = 10;
  const GAP = 2;
  const rows = steps.map(bars);
  const rowHeight = 24 + (rows[0]?.length || 1) * (BAR + GAP) + 30;
  const titleId = uid('chart-title');
  const descId = uid('chart-desc');
  const height = steps.length * rowHeight + 4;
  const chars = Math.floor(width / 8); // a 14 px title's characters that fit
  const scale = (v) => (max > 0 ? (Math.max(0, v) / max) * (width - 2) : 0);
  return s('svg', {
    class: `chart ${className}`, viewBox: `0 0 ${width} ${height}`, role: 'img',
    'aria-labelledby': `${titleId} ${descId}`, preserveAspectRatio: 'xMinYMin meet',
  },
  s('title', { id: titleId }, title),
  s('desc', { id: descId }, summary),
  steps.map((step, i) => {
    const y = i * rowHeight;
    const parts = rows[i];
    const barsEnd = y + 24 + parts.length * (BAR + GAP);
    return s('g', { class: 'chart-row', 'data-step': step.step_id },
      s('text', { x: 0, y: y + 16, class: 'chart-label' }, clip(`${i + 1}. ${step.title}`, chars)),
      parts.map((b, j) => s('rect', {
        x: 0, y: y + 24 + j * (BAR + GAP), height: BAR, width: b.value == null ? 0 : scale(b.value).toFixed(2),
        class: `bar ${b.cls}`, 'data-value': b.value ?? '',
      })),
      s('text', { x: 0, y: barsEnd + 16, class: 'chart-value' }, parts.map((b) => b.label).join(' · ')));
  }));
}

export function showSopStats(root, sop, { back }) {
  const messages = h('div');
  const since = h('input', { type: 'date', name: 'since' });
  const until = h('input', { type: 'date', name: 'until' });
  const area = h('div', { class: 'stats' });
  clear(root).append(
    back(),
    h('h1', { id: 'stats-title', tabindex: '-1' }, `Statistics: ${sop.title} `,
      h('span', { class: 'muted' }, `v${sop.version}`)),
    h('form', { class: 'filters', 'aria-label': 'Sessions started', onsubmit: (e) => { e.preventDefault(); load(); } },
      field('Started from', since), field('Started to', until, 'That day included'),
      h('button', { type: 'submit', class: 'secondary' }, 'Show')),
    messages, area);
  since.addEventListener('change', load);
  until.addEventListener('change', load);
  root.querySelector('#stats-title').focus();

  async function load() {
    let stats;
    try {
      const { after, before } = dayRange(since.value, until.value);
      stats = await get(`/sops/${sop.id}/stats${query({ since: after, until: before })}`);
      notice(messages, 'info', '');
    } catch (error) {
      notice(messages, 'error', describe(error));
      return;
    }
    draw(stats);
  }

  function draw(stats) {
    const n = stats.sessions;
    const steps = stats.steps;
    const maxTime = Math.max(0, ...steps.map((x) => x.p90_seconds || 0));
    const width = Math.round(Math.min(704, Math.max(280, area.clientWidth))); // .chart's max-width
    clear(area).append(
      h('dl', { class: 'facts' },
        fact('Sessions started', n.started),
        fact('Completed', n.completed),
        fact('Cancelled', n.cancelled),
        fact('In progress or paused', n.in_progress),
        fact('Time to complete (median)', seconds(n.median_seconds)),
        fact('Time to complete (p90)', seconds(n.p90_seconds))),
      h('h2', {}, 'Time per step'),
      h('p', { class: 'hint' }, 'Of the sessions that passed the step: time on it until passed, pauses '
        + 'left out. Dark: median; light: 90 % of sessions took at most this.'),
      barChart({
        title: 'Time per step, median and 90th percentile',
        summary: steps.map((x, i) => `Step ${i + 1}, ${x.title}: median ${seconds(x.median_seconds)}, `
          + `p90 ${seconds(x.p90_seconds)}`).join('. '),
        steps, max: maxTime, className: 'chart-time', width,
        bars: (x) => [
          { value: x.median_seconds, cls: 'bar-median', label: `median ${seconds(x.median_seconds)}` },
          { value: x.p90_seconds, cls: 'bar-p90', label: `p90 ${seconds(x.p90_seconds)}` }],
      }),
      h('h2', {}, 'Passed at the first check'),
      barChart({
        title: 'Share of sessions whose first check on the step passed',
        summary: steps.map((x, i) => `Step ${i + 1}, ${x.title}: ${percent(x.first_try_pass_rate)}`).join('. '),
        steps, max: 1, className: 'chart-rate', width,
        bars: (x) => [{ value: x.first_try_pass_rate, cls: 'bar-rate', label: percent(x.first_try_pass_rate) }],
      }),
      controlCharts(),
      h('details', { class: 'stats-table' }, h('summary', {}, 'The same figures as a table'),
        h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': 'Step statistics' },
          h('table', {},
            h('thead', {}, h('tr', {}, ['Step', 'Reached', 'Passed', 'First check passed', 'Failed checks',
              'Median time', 'p90 time'].map((c) => h('th', { scope: 'col' }, c)))),
            h('tbody', {}, steps.map((x, i) => h('tr', {},
              h('th', { scope: 'row' }, `${i + 1}. ${x.title}`),
              h('td', {}, String(x.reached)), h('td', {}, String(x.passed)),
              h('td', {}, percent(x.first_try_pass_rate)), h('td', {}, String(x.failed_checks)),
              h('td', {}, seconds(x.median_seconds)), h('td', {}, seconds(x.p90_seconds)))))))));
  }

  function fact(term, value) {
    return h('div', {}, h('dt', {}, term), h('dd', {}, String(value)));
  }

  // Each measurement step's control chart (spc.js), with a way back here.
  function controlCharts() {
    const measured = (sop.tasks || []).flatMap((t) => t.steps).map((step, i) => ({ step, i }))
      .filter(({ step }) => step.check.kind === 'measurement');
    if (!measured.length) return null;
    return h('section', { class: 'spc-links', 'aria-labelledby': 'spc-links-title' },
      h('h2', { id: 'spc-links-title' }, 'Control charts'),
      h('p', { class: 'hint' }, 'Each measurement step\'s values over time, with its control limits, '
        + 'the values that break a rule, and Cp/Cpk.'),
      h('ul', {}, measured.map(({ step, i }) => h('li', {},
        h('button', {
          type: 'button', class: 'secondary',
          onclick: () => showSpcChart(root, sop, step, {
            back: () => h('button', { type: 'button', class: 'secondary small back', onclick: () => showSopStats(root, sop, { back }) },
              h('span', { 'aria-hidden': 'true' }, '← '), 'Statistics'),
          }),
        }, `Control chart: ${i + 1}. ${step.title}`)))));
  }

  load();
}
