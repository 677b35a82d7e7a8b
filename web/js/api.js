// The console's only door to the service: the public /api/v1 of CONTRACT.md, same origin.

const TIMEOUT_MS = 15000;
let token = null;
let onUnauthorized = () => {};

export function setToken(value) { token = value; }
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

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
}

/** The service could not be reached at all (offline, refused, timed out). */
export class NetworkError extends Error {
  constructor() {
    super('Cannot reach the service. Check the connection and try again.');
    this.transient = true;
  }
}

export async function api(method, path, body) {
  const headers = { Accept: 'application/json, application/problem+json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  let response;
  try {
    response = await fetch(`/api/v1${path}`, {
      method, headers, cache: 'no-store', signal: abort.signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new NetworkError();
  } finally {
    clearTimeout(timer);
  }
  if (response.status === 204) return null;
  let data = null;
  if ((response.headers.get('content-type') || '').includes('json')) {
    try { data = await response.json(); } catch { data = null; }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401) onUnauthorized(error);
    throw error;
  }
  return data;
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body);
export const put = (path, body) => api('PUT', path, body);

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
    if (error.status === 503) {
      text = `The service cannot answer right now (${text}). Try again in a moment.`;
    }
    const fields = Array.isArray(error.problem.errors) ? error.problem.errors : [];
    const named = fields.filter((f) => f && f.field && f.message)
      .map((f) => `${f.field.replace(/^body\./, '')}: ${f.message}`);
    return named.length ? `${text} (${named.join('; ')})` : text;
  }
  return 'Something went wrong in the page. Reload it and try again.';
}
