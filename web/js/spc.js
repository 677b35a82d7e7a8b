// The control chart (individuals) of one measurement step: its values in the order they
// were taken, the mean, the control limits (mean ± 3σ, from the baseline), the spec limits
// (the step's min and max), and each value that breaks a Western Electric rule marked with
// the rule's number; Cp and Cpk beside it. Inline SVG, one user unit to the pixel, so its
// 14 px text stays 14 px on a 360 px phone. The same figures as a table for screen readers.
import { h, clear, uid } from './dom.js';
import { describe, get } from './api.js';
import { formatNumber, notice } from './ui.js';

const SVG = 'http://www.w3.org/2000/svg';

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, String(v));
  for (const c of children.flat()) if (c != null) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const stamp = new Intl.DateTimeFormat(undefined, { dateStyle: 'short', timeStyle: 'short' });
const at = (iso) => (iso ? stamp.format(new Date(iso)) : '–');
const num = (x, digits = 3) => (x == null ? '–' : formatNumber(Number(x.toPrecision(digits + 2))));
const RULES = {
  1: 'one point beyond a control limit (3σ)',
  2: 'two of three points beyond 2σ on one side',
  3: 'four of five points beyond 1σ on one side',
  4: 'eight points in a row on one side of the mean',
};

/** The chart as an SVG element `width` pixels wide. */
export function controlChart(chart, width) {
  const height = 280;
  const top = 28;
  const bottom = height - 28;
  const left = 4;
  const right = width - 4;
  const values = chart.points.map((p) => p.value);
  const lines = [
    { y: chart.usl, cls: 'spc-spec', label: 'USL' },
    { y: chart.ucl, cls: 'spc-limit', label: 'UCL' },
    { y: chart.mean, cls: 'spc-mean', label: 'Mean' },
    { y: chart.lcl, cls: 'spc-limit', label: 'LCL' },
    { y: chart.lsl, cls: 'spc-spec', label: 'LSL' },
  ].filter((l) => l.y != null);
  const all = [...values, ...lines.map((l) => l.y)];
  let lo = Math.min(...all);
  let hi = Math.max(...all);
  if (!(hi > lo)) { lo -= 1; hi += 1; }
  const pad = (hi - lo) * 0.08;
  lo -= pad; hi += pad;
  const y = (v) => bottom - ((v - lo) / (hi - lo)) * (bottom - top);
  const step = values.length > 1 ? (right - left - 16) / (values.length - 1) : 0;
  const x = (i) => left + 8 + i * step;
  const titleId = uid('spc-title');
  const descId = uid('spc-desc');
  const marked = chart.points.filter((p) => p.rules.length);
  const unit = chart.unit ? ` ${chart.unit}` : '';
  const summary = `${values.length} values. `
    + lines.map((l) => `${l.label} ${num(l.y)}${unit}`).join(', ') + '. '
    + (marked.length ? marked.map((p) => `${num(p.value)}${unit} at ${at(p.at)} breaks rule `
      + p.rules.join(' and ')).join('. ') : 'No value breaks a rule.');
  return s('svg', {
    class: 'chart spc-chart', viewBox: `0 0 ${width} ${height}`, role: 'img',
    'aria-labelledby': `${titleId} ${descId}`, preserveAspectRatio: 'xMinYMin meet',
  },
  s('title', { id: titleId }, `Control chart: ${chart.points.length} values`),
  s('desc', { id: descId }, summary),
  s('rect', { x: 0, y: 0, width, height, class: 'spc-frame' }),
  lines.map((l) => s('g', { class: `spc-line ${l.cls}`, 'data-line': l.label.toLowerCase(), 'data-value': l.y },
    s('line', { x1: left, x2: right, y1: y(l.y).toFixed(1), y2: y(l.y).toFixed(1) }),
    s('text', { x: right - 2, y: (y(l.y) - 4).toFixed(1), 'text-anchor': 'end', class: 'spc-line-label' },
      `${l.label} ${num(l.y)}`))),
  values.length > 1 ? s('polyline', {
    class: 'spc-path', points: values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' '),
  }) : null,
  chart.points.map((p, i) => s('g', {
    class: p.rules.length ? 'spc-point spc-out' : 'spc-point', 'data-value': p.value,
    'data-rules': p.rules.join(','),
  },
  p.rules.length
    ? s('rect', { x: (x(i) - 5).toFixed(1), y: (y(p.value) - 5).toFixed(1), width: 10, height: 10 })
    : s('circle', { cx: x(i).toFixed(1), cy: y(p.value).toFixed(1), r: 3 }),
  p.rules.length ? s('text', {
    x: x(i).toFixed(1), y: (y(p.value) > top + 20 ? y(p.value) - 9 : y(p.value) + 22).toFixed(1),
    'text-anchor': i > values.length / 2 ? 'end' : 'start', class: 'spc-rule-label',
  }, p.rules.join(',')) : null)),
  chart.points.length ? [
    s('text', { x: left + 2, y: height - 8, class: 'chart-value' }, at(chart.points[0].at)),
    s('text', { x: right - 2, y: height - 8, 'text-anchor': 'end', class: 'chart-value' },
      at(chart.points[chart.points.length - 1].at)),
  ] : null);
}

export function showSpcChart(root, sop, step, { back }) {
  const messages = h('div');
  const area = h('div', { class: 'stats spc' });
  clear(root).append(
    back(),
    h('h1', { id: 'spc-title', tabindex: '-1' }, `Control chart: ${step.title} `,
      h('span', { class: 'muted' }, `${sop.title} v${sop.version}`)),
    messages, area);
  root.querySelector('#spc-title').focus();

  async function load() {
    let chart;
    try {
      chart = await get(`/sops/${sop.id}/steps/${step.id}/spc`);
      notice(messages, 'info', '');
    } catch (error) {
      notice(messages, 'error', describe(error));
      return;
    }
    draw(chart);
  }

  function draw(chart) {
    const width = Math.round(Math.min(704, Math.max(280, area.clientWidth)));
    const unit = chart.unit ? ` ${chart.unit}` : '';
    const b = chart.baseline;
    const marked = chart.points.filter((p) => p.rules.length);
    clear(area).append(
      h('dl', { class: 'facts spc-facts' },
        fact('Cp', num(chart.cp)), fact('Cpk', num(chart.cpk)),
        fact('Mean', `${num(chart.mean)}${unit}`), fact('σ (MR / 1.128)', num(chart.sigma)),
        fact('Control limits', chart.ucl == null ? 'not yet (10 values needed)'
          : `${num(chart.lcl)} – ${num(chart.ucl)}${unit}`),
        fact('Spec limits', `${num(chart.lsl)} – ${num(chart.usl)}${unit}`),
        fact('Values', chart.n),
        fact('Baseline', b.n ? `${b.n} values, ${at(b.from)} – ${at(b.to)} (${b.set_by})` : 'no values yet')),
      chart.points.length ? controlChart(chart, width) : h('p', {}, 'No values recorded for this step yet.'),
      h('p', { class: 'hint' }, 'Dots: values in the order they were taken. Red squares: values that break a rule '
        + '(numbered). Red dashed lines: control limits. Orange dotted lines: spec limits (min, max).'),
      h('ul', { class: 'spc-rules' }, Object.entries(RULES).map(([n, text]) => h('li', {}, `Rule ${n}: ${text}`))),
      h('details', { class: 'stats-table' }, h('summary', {}, `Values that break a rule (${marked.length})`),
        h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': 'Values that break a rule' },
          h('table', {},
            h('thead', {}, h('tr', {}, ['Taken', 'Value', 'Rules'].map((c) => h('th', { scope: 'col' }, c)))),
            h('tbody', {}, marked.map((p) => h('tr', {},
              h('th', { scope: 'row' }, at(p.at)), h('td', {}, `${num(p.value)}${unit}`),
              h('td', {}, p.rules.join(', ')))))))));
  }

  function fact(term, value) {
    return h('div', {}, h('dt', {}, term), h('dd', {}, String(value)));
  }

  load();
}
