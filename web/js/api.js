// The console's only door to the service: the public /api/v1 of CONTRACT.md, same origin.

const TIMEOUT_MS = 15000;
const BYTES_PER_SECOND = 32 * 1024; // the slowest link a file is given time for
// A request the service shed (503 /problems/overloaded) never started: it is sent again,
// unchanged (a check keeps its check_id), after Retry-After plus up to as much again at
// random, so that the devices it turned away do not all come back in the same instant.
const BUSY_ATTEMPTS = 4;
let token = null;
let onUnauthorized = () => {};
let onBusy = () => {};
let onReach = () => {};

export function setToken(value) { token = value; }
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }
/** fn({ attempt, of, seconds }) while a shed request waits to be sent again; fn(null) after. */
export function setBusyHandler(fn) { onBusy = fn; }
/**
 * fn(true) when the service answered (a refusal or a problem of its own is an answer),
 * fn(false) when it could not be reached or kept silent past the timeout, or when a gateway
 * in front of it answered for it (502, 504, a 503 without the service's problem document).
 */
export function setReachHandler(fn) { onReach = fn; }

/** The service answered with an RFC 9457 problem (or at least an error status). */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `The service answered ${status}`);
    this.status = status;
    this.problem = problem || {};
  }

  get code() {
    const type = this.problem.type || '';
    return type.startsWith('/problems/') ? type.slice('/problems/'.length) : type;
  }

  // "Try again later" errors: the request may be sent again unchanged.
  get transient() { return this.status === 503 || this.status === 502 || this.status === 504; }

  // Shed at the door: the service did not start it.
  get overloaded() { return this.status === 503 && this.code === 'overloaded'; }
}

/** The service could not be reached at all (offline, refused, timed out). */
export class NetworkError extends Error {
  constructor() {
    super('Cannot reach the service. Check the connection and try again.');
    this.transient = true;
  }
}

/**
 * One request. `body`: JSON, or a Blob sent as it is (its type as Content-Type). `as`:
 * 'blob' for an answer read as a Blob (a file), else JSON.
 */
export async function api(method, path, body, { as = 'json' } = {}) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      const result = await send(method, path, body, as);
      if (attempt > 1) onBusy(null);
      return result;
    } catch (error) {
      if (!(error instanceof ApiError && error.overloaded) || attempt >= BUSY_ATTEMPTS) {
        if (attempt > 1) onBusy(null);
        throw error;
      }
      const seconds = error.retryAfter * (1 + Math.random());
      onBusy({ attempt: attempt + 1, of: BUSY_ATTEMPTS, seconds });
      await new Promise((resolve) => { setTimeout(resolve, seconds * 1000); });
    }
  }
}

async function send(method, path, body, as) {
  const headers = { Accept: 'application/json, application/problem+json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const raw = body instanceof Blob;
  if (raw) headers['Content-Type'] = body.type || 'application/octet-stream';
  else if (body !== undefined) headers['Content-Type'] = 'application/json';
  const abort = new AbortController();
  // a file takes longer on a slow link: a second more for every BYTES_PER_SECOND
  const wait = TIMEOUT_MS + (raw ? (body.size / BYTES_PER_SECOND) * 1000 : 0);
  const timer = setTimeout(() => abort.abort(), wait);
  let response;
  try {
    response = await fetch(`/api/v1${path}`, {
      method, headers, cache: 'no-store', signal: abort.signal,
      body: body === undefined || raw ? body : JSON.stringify(body),
    });
  } catch {
    onReach(false);
    throw new NetworkError();
  } finally {
    clearTimeout(timer);
  }
  const down = response.status === 502 || response.status === 504
    || (response.status === 503 && !(response.headers.get('content-type') || '').includes('json'));
  onReach(!down);
  if (response.status === 204) return null;
  if (response.ok && as === 'blob') {
    try { return await response.blob(); } catch { throw new NetworkError(); }
  }
  let data = null;
  if ((response.headers.get('content-type') || '').includes('json')) {
    try { data = await response.json(); } catch { data = null; }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    error.retryAfter = Math.min(Math.max(Number(response.headers.get('retry-after')) || 1, 1), 60);
    if (response.status === 401) onUnauthorized(error);
    throw error;
  }
  return data;
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body);
export const put = (path, body) => api('PUT', path, body);
/** A file (Blob) as the request's body, not JSON. */
export const upload = (path, blob) => api('POST', path, blob);
/** An answer that is a file: a Blob (e.g. an evidence file, read with the token). */
export const getBlob = (path) => api('GET', path, undefined, { as: 'blob' });

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v != null) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** Words for a person: the problem's `detail`, plus the fields a 422 names. */
export function describe(error) {
  if (error instanceof NetworkError) return error.message;
  if (error instanceof ApiError) {
    let text = error.problem.detail || error.message;
    if (error.overloaded) {
      text = 'The service is busy and did not take this yet. Try again in a moment.';
    } else if (error.status === 503) {
      text = `The service cannot answer right now (${text}). Try again in a moment.`;
    }
    const fields = Array.isArray(error.problem.errors) ? error.problem.errors : [];
    const named = fields.filter((f) => f && f.field && f.message)
      .map((f) => `${f.field.replace(/^body\./, '')}: ${f.message}`);
    return named.length ? `${text} (${named.join('; ')})` : text;
  }
  return 'Something went wrong in the page. Reload it and try again.';
}
