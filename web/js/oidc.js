// Sign-in through the company's OpenID Connect provider (CONTRACT.md, "Sign-in to the web
// console"): the authorization code flow with PKCE (RFC 7636) as a public client, no secret
// in the page. The provider is found by discovery; its tokens are kept in sessionStorage, for
// this tab's life only; they are renewed with the refresh token when the provider gave one;
// sign-out ends the provider's session where it offers an end_session_endpoint.
//
// Written here with Web Crypto (SHA-256 for the code challenge, random values for the
// verifier, state and nonce) rather than taken from a library: the console has no build step,
// and the well-kept libraries (oidc-client-ts, openid-client) ship as npm packages meant for
// a bundler, so using one would mean a vendored bundle of someone else's code to keep up to
// date for ~150 lines of protocol that this file holds.
//
// The ID token is not signature-checked in the page: it comes straight from the provider's
// token endpoint over the connection the page opened (OpenID Connect Core 3.1.3.7), and the
// page trusts no claim of it for anything but the nonce and the logout hint. The API checks
// every access token itself (api/oidc.py) and says who its holder is (GET /me).

const TOKENS_KEY = 'worksession.oidc.tokens'; // { access_token, refresh_token, id_token, expires_at }
const PENDING_KEY = 'worksession.oidc.pending'; // the sign-in under way: state, nonce, verifier, …
const DISCOVERY_KEY = 'worksession.oidc.discovery';
const TIMEOUT_MS = 15000;

/** What went wrong with the sign-in, in words for the person. */
export class SignInError extends Error {}

/** The console's sign-in settings from the service (`/app/config.json`), or null. */
export async function loadConfig() {
  try {
    const response = await fetch('config.json', { cache: 'no-store' });
    if (!response.ok) return null;
    const { oidc } = await response.json();
    return oidc && oidc.issuer && oidc.client_id ? oidc : null;
  } catch {
    return null; // no network: the sign-in links still work, and kept tokens still do
  }
}

const encoder = new TextEncoder();

function base64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes)))
    .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

const randomText = (n = 32) => base64url(crypto.getRandomValues(new Uint8Array(n)));

/** The claims of a JWT, read without checking it (see above: the nonce and the hint only). */
export function jwtClaims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(part.padEnd(Math.ceil(part.length / 4) * 4, '=')), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

async function fetchJson(url, options = {}) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  let response;
  try {
    response = await fetch(url, { ...options, signal: abort.signal, cache: 'no-store' });
  } catch {
    throw new SignInError('The sign-in service cannot be reached. Check the connection and try again.');
  } finally {
    clearTimeout(timer);
  }
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) {
    const why = body?.error_description || body?.error || `it answered ${response.status}`;
    const error = new SignInError(`The sign-in service refused the sign-in (${why}).`);
    error.code = body?.error;
    throw error;
  }
  return body;
}

/** The tokens of this tab's sign-in through the provider, or null (readable with no network). */
export function keptTokens() {
  try {
    return JSON.parse(sessionStorage.getItem(TOKENS_KEY) || 'null');
  } catch {
    return null;
  }
}

/** This tab's sign-in through the provider is over (a sign-in link took its place, or sign-out). */
export function forgetTokens() {
  sessionStorage.removeItem(TOKENS_KEY);
  sessionStorage.removeItem(PENDING_KEY);
}

export class Oidc {
  constructor(config) {
    this.config = config;
    this.redirectUri = new URL('./', document.baseURI).href; // the console's /app/
  }

  get providerName() { return this.config.provider_name || new URL(this.config.issuer).host; }

  /** The provider's metadata, found by discovery, kept for the tab. */
  async metadata() {
    const kept = JSON.parse(sessionStorage.getItem(DISCOVERY_KEY) || 'null');
    if (kept?.issuer === this.config.issuer) return kept;
    const issuer = this.config.issuer.replace(/\/+$/, '');
    const doc = await fetchJson(`${issuer}/.well-known/openid-configuration`);
    if (doc?.issuer !== this.config.issuer || !doc.authorization_endpoint || !doc.token_endpoint) {
      throw new SignInError('The sign-in service describes itself wrongly (its discovery '
        + 'document names another issuer, or no authorization or token endpoint). Tell your administrator.');
    }
    sessionStorage.setItem(DISCOVERY_KEY, JSON.stringify(doc));
    return doc;
  }

  get tokens() { return keptTokens(); }

  get accessToken() { return this.tokens?.access_token || null; }

  /** Milliseconds until the access token expires (negative: it has). */
  get expiresIn() { return (this.tokens?.expires_at || 0) - Date.now(); }

  keep(answer, previous = null) {
    const claims = jwtClaims(answer.access_token);
    const seconds = Number(answer.expires_in) || (claims?.exp ? claims.exp - Date.now() / 1000 : 300);
    sessionStorage.setItem(TOKENS_KEY, JSON.stringify({
      access_token: answer.access_token,
      // a refresh may or may not send a new refresh token (rotation) or ID token
      refresh_token: answer.refresh_token || previous?.refresh_token || null,
      id_token: answer.id_token || previous?.id_token || null,
      expires_at: Date.now() + seconds * 1000,
    }));
  }

  forget() { forgetTokens(); }

  /**
   * Off to the provider's sign-in page; back at this page (`returnTo`) with a code.
   * `reauthenticate`: the person must sign in again there even if the provider remembers them
   * (`max_age=0`: a signature needs a fresh authentication).
   */
  async signIn({ reauthenticate = false, returnTo = location.href } = {}) {
    if (!globalThis.crypto?.subtle) {
      throw new SignInError('Signing in through your company needs a secure connection (https). '
        + 'Open the console at its https address.');
    }
    const meta = await this.metadata();
    const pending = {
      state: randomText(), nonce: randomText(), verifier: randomText(), returnTo, reauthenticate,
    };
    const challenge = base64url(await crypto.subtle.digest('SHA-256', encoder.encode(pending.verifier)));
    sessionStorage.setItem(PENDING_KEY, JSON.stringify(pending));
    const url = new URL(meta.authorization_endpoint);
    const params = {
      response_type: 'code', client_id: this.config.client_id, redirect_uri: this.redirectUri,
      scope: this.config.scope || 'openid', state: pending.state, nonce: pending.nonce,
      code_challenge: challenge, code_challenge_method: 'S256',
    };
    if (reauthenticate) params.max_age = '0';
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
    location.assign(url.href);
    return new Promise(() => {}); // the page is leaving
  }

  /** This page was opened by the provider's redirect (`?code=…&state=…` or `?error=…`). */
  isCallback() {
    const q = new URLSearchParams(location.search);
    return q.has('state') && (q.has('code') || q.has('error'))
      && sessionStorage.getItem(PENDING_KEY) !== null;
  }

  /**
   * Ends the sign-in the provider sent back: the code for tokens (with the PKCE verifier),
   * the address bar cleaned and put back where the person was. Resolves to
   * { reauthenticated } or throws a SignInError.
   */
  async finishSignIn() {
    const q = new URLSearchParams(location.search);
    const pending = JSON.parse(sessionStorage.getItem(PENDING_KEY) || 'null');
    sessionStorage.removeItem(PENDING_KEY);
    history.replaceState(null, '', pending?.returnTo || this.redirectUri);
    if (!pending || q.get('state') !== pending.state) {
      throw new SignInError('That sign-in answer is not for this page (it may be an old one). Sign in again.');
    }
    if (q.has('error')) {
      const why = q.get('error_description') || q.get('error');
      throw new SignInError(`The sign-in did not complete (${why}).`);
    }
    const meta = await this.metadata();
    const answer = await fetchJson(meta.token_endpoint, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
      body: new URLSearchParams({
        grant_type: 'authorization_code', code: q.get('code'), redirect_uri: this.redirectUri,
        client_id: this.config.client_id, code_verifier: pending.verifier,
      }),
    });
    const id = answer?.id_token ? jwtClaims(answer.id_token) : null;
    const audience = [id?.aud].flat();
    if (!answer?.access_token || (answer.id_token && (id?.nonce !== pending.nonce
        || id?.iss !== this.config.issuer || !audience.includes(this.config.client_id)))) {
      throw new SignInError('The sign-in service sent back tokens this console cannot use. Sign in again.');
    }
    this.keep(answer);
    return { reauthenticated: pending.reauthenticate };
  }

  /** A new access token with the refresh token, without leaving the page: true when renewed. */
  async renew() {
    const tokens = this.tokens;
    if (!tokens?.refresh_token) return false;
    try {
      const meta = await this.metadata();
      const answer = await fetchJson(meta.token_endpoint, {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
        body: new URLSearchParams({
          grant_type: 'refresh_token', refresh_token: tokens.refresh_token,
          client_id: this.config.client_id,
        }),
      });
      if (!answer?.access_token) return false;
      this.keep(answer, tokens);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Forgets this tab's tokens and, where the provider offers it, ends its session there too
   * (the page then leaves for the provider, which sends the person back here). False when the
   * provider has no end_session_endpoint (or cannot be reached): the sign-in here is over.
   */
  async signOut() {
    const idToken = this.tokens?.id_token;
    this.forget();
    let meta = null;
    try { meta = await this.metadata(); } catch { meta = null; }
    if (!meta?.end_session_endpoint) return false;
    const url = new URL(meta.end_session_endpoint);
    url.searchParams.set('client_id', this.config.client_id);
    url.searchParams.set('post_logout_redirect_uri', this.redirectUri);
    if (idToken) url.searchParams.set('id_token_hint', idToken);
    location.assign(url.href);
    return true;
  }
}
