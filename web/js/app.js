// Boot: sign-in through the company's identity provider (oidc.js: this tab's tokens, or the
// provider's answer in the address), else from the URL fragment (#token=<jwt>, a sign-in link,
// kept in localStorage); then the worker's or the supervisor's view.
import { h, clear } from './dom.js';
import { ApiError, get, setBusyHandler, setToken, setUnauthorizedHandler } from './api.js';
import { ask, notice, shortId } from './ui.js';
import {
  Oidc, SignInError, forgetTokens, keptTokens, loadConfig,
} from './oidc.js';
import {
  dropPendingSignature, needsReauthentication, setReauthentication, takePendingSignature,
} from './sign.js';
import { Outbox } from './outbox.js';
import { forgetKept, mountWorker } from './worker.js';
import { mountSupervisor } from './supervisor.js';

const TOKEN_KEY = 'worksession.token';
const ME_KEY = 'worksession.me'; // who the API said this token's holder is, for opening offline
const TEMPORAL_UI_KEY = 'worksession.temporal-ui';

const main = document.getElementById('main');
const who = document.getElementById('who');
const nav = document.getElementById('nav');
const signOut = document.getElementById('sign-out');
const busy = document.getElementById('busy');

setBusyHandler((wait) => {
  busy.hidden = !wait;
  busy.textContent = wait ? `The service is busy, retrying in ${Math.ceil(wait.seconds)} s `
    + `(attempt ${wait.attempt} of ${wait.of}). Nothing you entered is lost.` : '';
});

// The worker's page opens with no network once it has been opened (sw.js). Served by the
// API itself, so 127.0.0.1/localhost or https: a plain-http LAN address gets no worker.
if ('serviceWorker' in navigator) {
  navigator.serviceWorker.register('sw.js', { scope: './' }).catch(() => {});
}

let running = null; // the signed-in view's outbox, stopped when the sign-in ends

// The identity provider the console signs in through (`/app/config.json`), or null: sign-in
// links only. Asked for at once, waited for only where it is needed (a page signed in by a
// link opens without it).
const providerReady = loadConfig().then((config) => (config ? new Oidc(config) : null));
let viaProvider = false; // this tab is signed in through the provider (else by a link)
const RENEW_BEFORE_MS = 60 * 1000; // renew the access token this long before it expires
const RENEW_AGAIN_MS = 60 * 1000; // after a 401, renew at most this often (else sign in)
let renewTimer = null;
let renewedAt = 0;

/** Take the token (and an optional Temporal UI address) out of the address bar. */
function readFragment() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const token = hash.get('token');
  if (!token) return;
  localStorage.setItem(TOKEN_KEY, token.trim());
  forgetTokens(); // a sign-in link takes the place of this tab's sign-in through the provider
  const ui = hash.get('temporal_ui');
  if (ui && safeHttpUrl(ui)) localStorage.setItem(TEMPORAL_UI_KEY, ui.replace(/\/+$/, ''));
  history.replaceState(null, '', location.pathname + location.search);
}

function safeHttpUrl(text) {
  try {
    const url = new URL(text);
    return url.protocol === 'http:' || url.protocol === 'https:';
  } catch {
    return false;
  }
}

/** The Temporal UI: from the sign-in link, else <meta name="temporal-ui">, else this host:8233. */
export function temporalUi() {
  const meta = document.querySelector('meta[name="temporal-ui"]')?.content?.trim();
  const stored = localStorage.getItem(TEMPORAL_UI_KEY);
  const base = stored || (meta && safeHttpUrl(meta) ? meta : null)
    || `${location.protocol}//${location.hostname}:8233`;
  const namespace = document.querySelector('meta[name="temporal-namespace"]')?.content || 'default';
  return { base: base.replace(/\/+$/, ''), namespace };
}

/** The token's claims, read only for its expiry: the API checks the signature and says who. */
function claimsOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const json = decodeURIComponent([...atob(part.padEnd(Math.ceil(part.length / 4) * 4, '='))]
      .map((c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join(''));
    const claims = JSON.parse(json);
    return claims && typeof claims.sub === 'string' ? claims : null;
  } catch {
    return null;
  }
}

/**
 * Who the token's holder is, as the API decides it (`GET /me`: {id, name, role}, the role
 * through the identity provider's claim and role map): the console never reads roles from
 * the token itself. The answer is kept, so a page opened with no network still knows.
 */
async function whoAmI(token) {
  const mark = token.slice(-24); // which token the kept answer is for
  let kept = null;
  try {
    const stored = JSON.parse(localStorage.getItem(ME_KEY) || 'null');
    kept = stored?.mark === mark ? stored.me : null;
  } catch {
    kept = null;
  }
  const keep = (answer) => localStorage.setItem(ME_KEY, JSON.stringify({ mark, me: answer }));
  if (kept) { // open at once as the person this device knew; the API's answer has the last word
    get('/me').then((fresh) => {
      keep(fresh);
      if (fresh.id !== kept.id || fresh.role !== kept.role) location.reload();
    }).catch(() => {}); // offline or silent: the kept answer stands (a 401 signs out)
    return kept;
  }
  const answer = await get('/me');
  keep(answer);
  return answer;
}

let me = null; // the signed-in person, as the API said

function showSignIn(message) {
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(ME_KEY);
  forgetTokens();
  viaProvider = false;
  clearTimeout(renewTimer);
  setToken(null);
  running?.stop();
  running = null;
  clear(nav);
  who.textContent = '';
  signOut.hidden = true;
  const status = h('div');
  const input = h('textarea', {
    id: 'token-input', name: 'token', rows: 4, required: true, autocomplete: 'off',
    spellcheck: 'false', 'aria-describedby': 'token-hint',
  });
  const form = h('form', {
    class: 'card narrow',
    onsubmit: (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!claimsOf(token)) {
        notice(status, 'error', 'That is not a token this console can read. Paste the whole token.');
        input.setAttribute('aria-invalid', 'true');
        input.focus();
        return;
      }
      localStorage.setItem(TOKEN_KEY, token);
      start();
    },
  },
  h('h1', {}, 'Sign in'),
  h('p', {}, 'Open the sign-in link from your supervisor, or sign in through your company\'s '
    + 'sign-in page, which brings you back here.'),
  h('p', {}, 'No link, or it has expired? Ask your supervisor for a new one.'),
  status,
  h('div', { class: 'field' }, h('label', { for: 'token-input' }, 'Access token'),
    h('p', { class: 'hint', id: 'token-hint' }, 'Only if you were given one to paste.'), input),
  h('button', { type: 'submit', class: 'primary' }, 'Sign in'),
  h('details', { class: 'admin-note' }, h('summary', {}, 'For administrators'),
    h('p', {}, 'Sign-in links carry a token from the identity provider the service trusts. '
      + 'On a development machine, ', h('code', {}, 'worksession dev'), ' prints a link for a '
      + 'worker and one for a supervisor, and ', h('code', {}, 'worksession token'), ' makes more.')));
  clear(main).append(form);
  if (message) notice(status, 'error', message);
  providerReady.then((provider) => {
    if (!provider || !form.isConnected) return;
    const button = h('button', {
      type: 'button', class: 'primary provider-sign-in',
      onclick: async () => {
        button.disabled = true;
        try {
          await provider.signIn({ returnTo: location.href });
        } catch (error) {
          button.disabled = false;
          notice(status, 'error', error instanceof SignInError ? error.message : String(error));
        }
      },
    }, `Sign in with ${provider.providerName}`);
    form.querySelector('h1').after(h('div', { class: 'provider' }, button,
      h('p', { class: 'hint' }, 'Your company\'s sign-in page opens, then brings you back here.')));
    if (!message) button.focus();
  });
}

/** A new access token from the provider, in use at once; the next renewal planned. */
async function renewToken(provider) {
  renewedAt = Date.now();
  if (!(await provider.renew())) return false;
  setToken(provider.accessToken);
  planRenewal(provider);
  return true;
}

function planRenewal(provider) {
  clearTimeout(renewTimer);
  if (!provider.tokens?.refresh_token) return; // without one, the next sign-in is a fresh one
  // a minute before it expires, or halfway through a short-lived one
  renewTimer = setTimeout(() => { renewToken(provider); },
    Math.max(provider.expiresIn - RENEW_BEFORE_MS, provider.expiresIn / 2, 5000));
}

/** A 401 in a tab signed in through the provider: renew once, else sign in afresh. */
let renewing = null;
function expired() {
  renewing ||= (async () => {
    const provider = await providerReady;
    const renewed = provider && Date.now() - renewedAt > RENEW_AGAIN_MS && await renewToken(provider);
    if (!renewed) showSignIn('Your sign-in has expired. Sign in again.');
  })().finally(() => { renewing = null; });
}

/** This tab's access token from the provider (renewed first if it has run out), or null. */
async function providerToken() {
  if (!keptTokens()?.access_token) return null;
  const provider = await providerReady;
  if (!provider) return keptTokens().access_token; // no network for the settings: use it as it is
  if (provider.expiresIn < 10000 && !(await renewToken(provider))) {
    forgetTokens();
    return null;
  }
  planRenewal(provider);
  return provider.accessToken;
}

async function start(afterProvider = false) {
  let token = await providerToken();
  viaProvider = Boolean(token);
  if (!token && afterProvider) return showSignIn('Your sign-in has expired. Sign in again.');
  if (token) {
    localStorage.removeItem(TOKEN_KEY); // one sign-in at a time: the provider's is the latest
  } else {
    token = localStorage.getItem(TOKEN_KEY);
    if (!token) return showSignIn();
    const claims = claimsOf(token);
    if (!claims) return showSignIn('That sign-in link is damaged. Ask for a new one.');
    if (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) {
      return showSignIn('Your sign-in has expired. Open a new sign-in link.');
    }
  }
  setToken(token);
  setUnauthorizedHandler((error) => {
    if (needsReauthentication(error)) return; // a signature's, answered where it was made (sign.js)
    if (viaProvider) expired();
    else if (localStorage.getItem(TOKEN_KEY)) {
      showSignIn('Your sign-in is no longer valid. Open a new sign-in link.');
    }
  });
  try {
    me = await whoAmI(token);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return undefined; // shown by the handler
    clear(main).append(h('div', { class: 'card narrow' }, h('h1', {}, 'Signing in')));
    notice(main.firstChild, 'error', `${error.message} Nothing is lost: try again in a moment.`, [
      h('button', { type: 'button', class: 'primary', onclick: () => start() }, 'Try again')]);
    return undefined;
  }
  // A signature needing a fresh sign-in goes through the provider, and is finished back here.
  const provider = viaProvider ? await providerReady : null;
  setReauthentication(provider ? () => provider.signIn({ reauthenticate: true }) : null, me.id);
  const pendingSignature = takePendingSignature(me.id);
  const role = me.role === 'worker' ? 'Worker' : me.role === 'admin' ? 'Admin' : 'Supervisor';
  who.textContent = `${role} ${me.name || shortId(me.id)}`;
  who.title = me.id;
  signOut.hidden = false;
  clear(main);
  // the views know the person by the API's id (a provider's `sub` need not be one)
  const person = { sub: me.id, role: me.role, name: me.name };
  if (me.role === 'worker') {
    const outbox = new Outbox(me.id);
    mountWorker(main, {
      claims: person, outbox, pendingBar: document.getElementById('pending'),
      offlineBar: document.getElementById('offline'), pendingSignature,
    });
    outbox.start();
    running = outbox;
  } else {
    mountSupervisor(main, { claims: person, nav, temporalUi, pendingSignature });
  }
  return undefined;
}

signOut.addEventListener('click', async () => {
  // A check tapped a moment ago (still undoable) joins the outbox now, to be counted and kept.
  window.dispatchEvent(new Event('worksession:before-sign-out'));
  const waiting = running?.size || 0;
  if (waiting) {
    // The outbox is kept per worker in this browser (outbox.js): signing in again sends it.
    const one = waiting === 1;
    const checks = `${waiting} check${one ? '' : 's'}`;
    const ok = await ask({
      title: `Sign out with ${checks} not sent?`,
      text: `${checks} ${one ? 'is' : 'are'} still waiting to be sent: your supervisor does not `
        + `have ${one ? 'it' : 'them'} yet. ${one ? 'It stays' : 'They stay'} on this device and `
        + `${one ? 'is' : 'are'} sent when you sign in here again. If you can, stay signed in `
        + 'until the connection returns.',
      confirmLabel: 'Sign out anyway',
      cancelLabel: 'Stay signed in',
      danger: true,
    });
    if (!ok) return;
  }
  // what this device kept of the worker's sessions goes with the sign-in
  if (me) forgetKept(me.id);
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(ME_KEY);
  setToken(null);
  clearTimeout(renewTimer);
  // signed in through the provider: its session ends too, where it offers that (it sends
  // the person back here, to the sign-in page)
  const provider = viaProvider ? await providerReady : null;
  if (provider && await provider.signOut()) return;
  forgetTokens();
  location.reload();
});

// A sign-in link opened in a tab that already shows the console only changes the fragment.
window.addEventListener('hashchange', () => {
  if (new URLSearchParams(location.hash.slice(1)).has('token')) {
    readFragment();
    location.reload();
  }
});

/** The provider sent the person back here (`?code=&state=`): finish the sign-in, then start. */
async function boot() {
  readFragment();
  const provider = new URLSearchParams(location.search).has('state') ? await providerReady : null;
  if (provider?.isCallback()) {
    try {
      await provider.finishSignIn();
    } catch (error) {
      const text = error instanceof SignInError ? error.message : String(error);
      if (!keptTokens()) {
        showSignIn(text);
        return;
      }
      // a fresh sign-in for a signature that did not complete: still signed in as before,
      // and the signature is not sent
      dropPendingSignature();
      await start();
      const box = h('div', { class: 'messages' });
      main.prepend(box);
      notice(box, 'error', `${text} Your signature was not recorded.`);
      return;
    }
    start(true);
    return;
  }
  start();
}

boot();
