// The page's side of the holder's web API: the session from the link's one-time secret, reads,
// and changes that carry their single-use token.

export const CSRF_HEADER = 'x-keytether-csrf';

/** Spends the secret in the URL fragment (once) for the session cookie; drops it from the URL. */
export async function startSession() {
  const secret = location.hash.slice(1);
  if (!secret) return true;
  history.replaceState(null, '', location.pathname);
  const r = await fetch('/api/session', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ secret }),
    credentials: 'same-origin',
  });
  return r.ok;
}

export async function getJson(path) {
  const r = await fetch(path, { credentials: 'same-origin' });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

export async function postJson(path, body, token) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers[CSRF_HEADER] = token;
  const r = await fetch(path, {
    method: 'POST',
    headers,
    body: JSON.stringify(body ?? {}),
    credentials: 'same-origin',
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error ?? `${r.status}`);
  return data;
}

/** A single-use token for one change other than answering a request. */
export async function actionToken() {
  return (await getJson('/api/csrf')).token;
}
