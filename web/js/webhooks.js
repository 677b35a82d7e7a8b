// Webhooks, for admins (CONTRACT.md, "Webhooks"): the subscriptions, a new one (its secret
// shown once), delete, and each one's recent deliveries with Redeliver.
import { h, clear } from './dom.js';
import { ApiError, api, describe, get, post } from './api.js';
import { ask, badge, field, notice, when } from './ui.js';

export const EVENTS = [
  'session.started', 'session.completed', 'session.cancelled', 'session.approved',
  'session.needs_attention', 'check.failed', 'signature.created', 'nonconformance.opened',
  'nonconformance.contained', 'nonconformance.overdue', 'nonconformance.closed',
  'spc.out_of_control',
];
const DELIVERY = { pending: 'Pending', delivered: 'Delivered', failed: 'Failed' };
const DELIVERY_BADGE = { pending: 'paused', delivered: 'passed', failed: 'failed' };

/** ctx: { root, setTab }. Returns { show }. */
export function webhookViews(ctx) {
  const { root } = ctx;

  async function show(created = null, message = '') {
    ctx.setTab('webhooks');
    clear(root);
    const messages = h('div', { class: 'messages' });
    const list = h('div');
    root.append(h('h1', { id: 'webhooks-title', tabindex: '-1' }, 'Webhooks'),
      h('p', { class: 'hint' }, 'The service sends each chosen event to the address, signed '
        + '(Standard Webhooks), and retries for 24 hours until the receiver answers 2xx.'),
      messages);
    if (created) root.append(secretCard(created));
    root.append(createForm(messages), h('h2', {}, 'Subscriptions'), list);
    if (message) notice(messages, 'ok', message);
    let subscriptions;
    try {
      subscriptions = await get('/webhooks');
    } catch (error) {
      notice(messages, 'error', describe(error));
      return;
    }
    if (!subscriptions.length) {
      list.append(h('p', { class: 'muted' }, 'No subscription yet.'));
      return;
    }
    for (const s of subscriptions) list.append(subscriptionCard(s));
    (created ? root.querySelector('.secret-card h2') : root.querySelector('#webhooks-title'))?.focus();
  }

  function secretCard(created) {
    const secret = h('input', {
      type: 'text', readonly: true, value: created.secret, class: 'secret', spellcheck: 'false',
      onfocus: (e) => e.target.select(),
    });
    return h('section', { class: 'card secret-card notice-warn', 'aria-labelledby': 'secret-title' },
      h('h2', { id: 'secret-title', tabindex: '-1' }, 'The signing secret of ', created.url),
      h('p', {}, 'Copy it now into the receiver\'s settings: it is shown only this once. '
        + 'Select it and copy (Ctrl+C), or use Copy.'),
      field('Secret', secret),
      h('div', { class: 'actions' }, h('button', {
        type: 'button', class: 'secondary',
        onclick: async (e) => {
          try {
            await navigator.clipboard.writeText(created.secret);
            e.target.textContent = 'Copied';
          } catch {
            secret.focus();
            e.target.textContent = 'Selected: press Ctrl+C';
          }
        },
      }, 'Copy')));
  }

  function createForm() {
    const url = h('input', { type: 'url', name: 'url', required: true, autocomplete: 'off', spellcheck: 'false' });
    const description = h('input', { type: 'text', name: 'description', maxlength: 500 });
    const boxes = EVENTS.map((e) => h('input', { type: 'checkbox', name: 'events', value: e, id: `ev-${e.replace(/\./g, '-')}` }));
    const errors = h('div');
    return h('form', {
      class: 'card webhook-form', 'aria-labelledby': 'new-webhook-title', novalidate: true,
      onsubmit: async (event) => {
        event.preventDefault();
        const events = boxes.filter((b) => b.checked).map((b) => b.value);
        const body = { url: url.value.trim(), events };
        if (description.value.trim()) body.description = description.value.trim();
        if (!body.url || !events.length) {
          notice(errors, 'error', !body.url ? 'Enter the receiver\'s address (https://…).' : 'Choose at least one event.');
          (body.url ? boxes[0] : url).focus();
          return;
        }
        try {
          show(await post('/webhooks', body));
        } catch (error) {
          notice(errors, 'error', describe(error));
        }
      },
    },
    h('h2', { id: 'new-webhook-title' }, 'New subscription'),
    field('Address', url, 'https://…, the receiver\'s URL'),
    h('fieldset', { class: 'events' }, h('legend', {}, 'Events'),
      boxes.map((b) => h('div', { class: 'check-field' }, b, h('label', { for: b.id }, b.value)))),
    field('Description (optional)', description),
    errors,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Add subscription')));
  }

  function subscriptionCard(s) {
    const deliveries = h('div');
    const card = h('section', { class: 'card webhook', 'aria-label': `Subscription ${s.url}` },
      h('h3', {}, h('code', {}, s.url)),
      s.description ? h('p', {}, s.description) : null,
      h('p', { class: 'hint' }, 'Events: ', s.events.join(', '), '. Added ', when(s.created_at), '.'),
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'danger small', onclick: () => remove(s) }, 'Delete'),
        h('button', { type: 'button', class: 'secondary small', onclick: () => loadDeliveries(s, deliveries) },
          'Refresh deliveries')),
      h('h4', {}, 'Recent deliveries'),
      deliveries);
    loadDeliveries(s, deliveries);
    return card;
  }

  async function loadDeliveries(s, area) {
    let page;
    try {
      page = await get(`/webhooks/${s.id}/deliveries?limit=20`);
    } catch (error) {
      notice(area, 'error', describe(error));
      return;
    }
    clear(area);
    if (!page.items.length) {
      area.append(h('p', { class: 'muted' }, 'None yet.'));
      return;
    }
    const status = h('div');
    area.append(status, h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': `Deliveries to ${s.url}` },
      h('table', { class: 'deliveries' },
        h('thead', {}, h('tr', {}, ['Event', 'Status', 'Attempts', 'Last answer', 'Last attempt', '']
          .map((c) => h('th', { scope: 'col' }, c || h('span', { class: 'visually-hidden' }, 'Action'))))),
        h('tbody', {}, page.items.map((d) => h('tr', {},
          h('td', {}, d.event_type, h('br'), h('span', { class: 'muted' }, when(d.event_at, { seconds: true }))),
          h('td', {}, badge(DELIVERY_BADGE[d.status] || d.status, DELIVERY[d.status] || d.status)),
          h('td', {}, String(d.attempts)),
          h('td', {}, d.last_status_code ? `HTTP ${d.last_status_code}` : '', d.last_error ? ` ${d.last_error}` : '',
            !d.last_status_code && !d.last_error ? '—' : ''),
          h('td', {}, d.last_attempt_at ? when(d.last_attempt_at, { seconds: true }) : '—'),
          h('td', {}, h('button', {
            type: 'button', class: 'secondary small',
            'aria-label': `Redeliver ${d.event_type} of ${new Date(d.event_at).toLocaleString()}`,
            onclick: async () => {
              try {
                await post(`/webhooks/${s.id}/deliveries/${d.id}/redeliver`);
                await loadDeliveries(s, area);
                notice(area.firstChild, 'ok', `${d.event_type}: sent again.`);
              } catch (error) {
                notice(status, 'error', describe(error));
              }
            },
          }, 'Redeliver'))))))));
  }

  async function remove(s) {
    const ok = await ask({
      title: 'Delete this subscription?',
      text: `${s.url} gets no more events from the service.`,
      confirmLabel: 'Delete', danger: true,
    });
    if (!ok) return;
    try {
      await api('DELETE', `/webhooks/${s.id}`);
      show(null, 'Deleted.');
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) show(null, 'Already deleted.');
      else notice(root.querySelector('.messages'), 'error', describe(error));
    }
  }

  return { show };
}
