// The evidence files (photos, PDFs) of checks not yet delivered, kept on the device.
//
// localStorage holds strings only, a few megabytes in all: the files' bytes go to IndexedDB,
// one record per file, keyed by [check_id, file_id], with its owner (the signed-in person, so
// that one person's sweep leaves another's files alone), name, type and size. A file is
// written here when the worker picks it (before the check exists: the card already knows the
// check_id it will send), so a check that goes to the outbox at once (a tap, then the page
// hidden) finds its files there. The outbox (outbox.js) reads them to upload them, and
// removes a check's files once the check has been delivered (or refused); files of no check
// in the outbox that were picked a day ago or more (picked, then the page closed before the
// check was recorded) go when the outbox starts (`sweep`). Not younger ones: another tab of
// the console on the same phone shares this database, and its worker may have just picked
// them for a check still on its card.

const DB = 'worksession-evidence';
const STORE = 'files';

let opening = null;
function db() {
  opening ||= new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, 1);
    request.onupgradeneeded = () => {
      request.result.createObjectStore(STORE, { keyPath: ['check_id', 'file_id'] });
    };
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
    request.onblocked = () => reject(new Error('IndexedDB blocked'));
  }).catch((error) => { opening = null; throw error; });
  return opening;
}

async function run(mode, fn) {
  const tx = (await db()).transaction(STORE, mode);
  const result = fn(tx.objectStore(STORE));
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve(result.result ?? result);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error('IndexedDB transaction aborted'));
  });
}

// every file_id of a check: [check_id, any string] (arrays sort after strings)
const ofCheck = (checkId) => IDBKeyRange.bound([checkId, ''], [checkId, []]);

/** Keeps one file of a check; resolves once it is written. */
export function putFile(owner, checkId, fileId, file) {
  return run('readwrite', (store) => store.put({
    check_id: checkId, file_id: fileId, owner, name: file.name || '', type: file.type || '',
    bytes: file.size, blob: file, kept_at: new Date().toISOString(),
  }));
}

/** The Blob kept for a check's file, or null. */
export async function getFile(checkId, fileId) {
  const record = await run('readonly', (store) => store.get([checkId, fileId]));
  return record?.blob || null;
}

export function removeFile(checkId, fileId) {
  return run('readwrite', (store) => store.delete([checkId, fileId]));
}

/** Every file of a check goes. */
export function removeCheck(checkId) {
  return run('readwrite', (store) => store.delete(ofCheck(checkId)));
}

const ABANDONED_MS = 24 * 60 * 60 * 1000;

/** Files of `owner` whose check is not in `keep` (a Set of check_ids), kept a day or more. */
export async function sweep(owner, keep, now = Date.now()) {
  const keys = await run('readonly', (store) => store.getAll());
  const gone = keys.filter((r) => r.owner === owner && !keep.has(r.check_id)
    && !(now - Date.parse(r.kept_at) < ABANDONED_MS));
  if (!gone.length) return;
  await run('readwrite', (store) => {
    for (const r of gone) store.delete([r.check_id, r.file_id]);
    return {};
  });
}

/** The check_ids that have files kept here (tests and the page's own checks). */
export async function keptChecks() {
  const records = await run('readonly', (store) => store.getAll());
  return [...new Set(records.map((r) => r.check_id))];
}
