// The console's service worker: the page opens with no network.
//
// - The app shell (this folder's files) is kept at install and refreshed whenever the network
//   answers: network first, the kept copy when it does not answer within a few seconds.
// - A worker's reads of the API (the confirmed SOPs, their sessions) are kept the same way,
//   in a cache of that worker's own (named by the token's subject), marked with the time they
//   were fetched (`X-Worksession-Saved-At`) so the page can say how old what it shows is.
//   Supervisors' reads are never kept. Sign-out deletes the worker's cache.
// - Nothing else is touched: every change (POST) goes to the network as before; a check that
//   cannot be sent waits in the page's outbox.
const SHELL = 'worksession-shell';
const FILES = ['./', 'app.css', 'manifest.webmanifest', 'icon.svg', 'js/api.js', 'js/app.js',
  'js/dom.js', 'js/editor.js', 'js/outbox.js', 'js/stats.js', 'js/supervisor.js', 'js/ui.js',
  'js/worker.js'];
const NETWORK_WAIT_MS = 4000;
const SAVED_AT = 'X-Worksession-Saved-At';

const apiCache = (sub) => `worksession-api-${sub}`;

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(SHELL).then((c) => c.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('message', (event) => {
  if (event.data && typeof event.data.forget === 'string') {
    event.waitUntil(caches.delete(apiCache(event.data.forget)));
  }
});

/** The token's claims, read only to choose a cache (the API checks the signature). */
function claims(request) {
  const auth = request.headers.get('Authorization') || '';
  const part = auth.startsWith('Bearer ') ? auth.slice(7).split('.')[1] : null;
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(b64.padEnd(Math.ceil(b64.length / 4) * 4, '=')));
  } catch {
    return null;
  }
}

self.addEventListener('fetch', (event) => {
  const { request } = event;
  const url = new URL(request.url);
  if (request.method !== 'GET' || url.origin !== self.location.origin) return;
  if (url.pathname.startsWith('/api/v1/')) {
    const who = claims(request);
    if (!who || who.role !== 'worker' || typeof who.sub !== 'string') return;
    event.respondWith(networkFirst(request, apiCache(who.sub), request.url));
  } else if (request.mode === 'navigate' && (url.pathname === '/app' || url.pathname.startsWith('/app/'))) {
    event.respondWith(networkFirst(request, SHELL, new URL('./', self.registration.scope).href));
  } else if (url.pathname.startsWith('/app/')) {
    event.respondWith(networkFirst(request, SHELL, url.origin + url.pathname));
  }
});

/**
 * The network's answer, kept; or, when the network fails or keeps silent for a few seconds,
 * the copy kept last time (marked with when it was fetched). The network's answer still
 * refreshes the copy when it comes late.
 */
async function networkFirst(request, cacheName, key) {
  const cache = await caches.open(cacheName);
  const fromNetwork = fetch(request).then(async (response) => {
    if (response.ok) {
      const headers = new Headers(response.headers);
      headers.set(SAVED_AT, new Date().toISOString());
      await cache.put(key, new Response(await response.clone().blob(), {
        status: response.status, statusText: response.statusText, headers,
      }));
    }
    return response;
  });
  fromNetwork.catch(() => {}); // a late failure is answered by the kept copy below
  const late = new Promise((resolve) => { setTimeout(resolve, NETWORK_WAIT_MS, null); });
  let response = null;
  try {
    response = await Promise.race([fromNetwork, late]);
  } catch {
    // unreachable: the kept copy below
  }
  // a gateway's "service down" is no better than no network
  if (response && ![502, 503, 504].includes(response.status)) return response;
  const kept = await cache.match(key);
  if (kept) return kept;
  return response || fromNetwork; // nothing kept: the network's answer, whenever it comes
}
