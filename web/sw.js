// The console's service worker: the page opens with no network, or with a service that does
// not answer.
//
// - The app shell (this folder's files) is kept at install and refreshed whenever the network
//   answers: network first, the kept copy when it does not answer within a few seconds. A
//   page whose document came from the kept copy gets its other files from the kept copy at
//   once (same version, and no wait of a few seconds for each wave of module imports).
// - The API is not touched: no answer of it is kept or served from here. What the worker's
//   page needs to carry on (the running session as the service last answered it, its SOP's
//   steps, the checks waiting to be sent) the page keeps itself (js/keep.js, js/outbox.js),
//   written on every answer: a copy kept here answered for the session with whatever read
//   came last, e.g. a list of running sessions fetched before the start ("no session").
// - Every change (POST) goes to the network as before; a check that cannot be sent waits in
//   the page's outbox.
const SHELL = 'worksession-shell';
const FILES = ['./', 'app.css', 'manifest.webmanifest', 'icon.svg', 'js/api.js', 'js/app.js',
  'js/dom.js', 'js/editor.js', 'js/files.js', 'js/keep.js', 'js/nc.js', 'js/oidc.js', 'js/outbox.js', 'js/sign.js',
  'js/spc.js', 'js/stats.js', 'js/supervisor.js', 'js/ui.js', 'js/webhooks.js', 'js/worker.js'];
const NETWORK_WAIT_MS = 2500;

// Pages (client ids) whose document was the kept copy: their files come from it too. Lost
// when the browser stops this worker between events: those pages then wait for the network
// first, as any other.
const fromKept = new Set();

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(SHELL).then((c) => c.addAll(FILES)).then(() => self.skipWaiting()));
});

// Caches of earlier versions (the API answers they kept, `worksession-api-<worker>`) go.
self.addEventListener('activate', (event) => event.waitUntil(
  caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== SHELL).map((k) => caches.delete(k))))
    .then(() => self.clients.claim())));

self.addEventListener('fetch', (event) => {
  const { request } = event;
  const url = new URL(request.url);
  if (request.method !== 'GET' || url.origin !== self.location.origin) return;
  if (!(url.pathname === '/app' || url.pathname.startsWith('/app/'))) return; // the API, …
  if (request.mode === 'navigate') {
    event.respondWith(networkFirst(request, new URL('./', self.registration.scope).href)
      .then(({ response, kept }) => {
        if (kept && event.resultingClientId) fromKept.add(event.resultingClientId);
        return response;
      }));
  } else if (fromKept.has(event.clientId)) {
    event.respondWith(keptFirst(request, url.origin + url.pathname));
  } else {
    event.respondWith(networkFirst(request, url.origin + url.pathname)
      .then(({ response }) => response));
  }
});

/**
 * The network's answer, kept; or, when the network fails or keeps silent for a few seconds,
 * the copy kept last time (`kept`: true). The network's answer still refreshes the copy when
 * it comes late.
 */
async function networkFirst(request, key) {
  const cache = await caches.open(SHELL);
  const fromNetwork = fetch(request).then(async (response) => {
    if (response.ok) await cache.put(key, response.clone());
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
  if (response && ![502, 503, 504].includes(response.status)) return { response, kept: false };
  const copy = await cache.match(key);
  if (copy) return { response: copy, kept: true };
  return { response: response || await fromNetwork, kept: false }; // nothing kept: wait
}

async function keptFirst(request, key) {
  const copy = await caches.match(key, { cacheName: SHELL });
  if (copy) return copy;
  return (await networkFirst(request, key)).response;
}
