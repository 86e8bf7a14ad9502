// Unlocked keys with the time left in the holder's cache (what `keytether status` lists), and
// "lock now" (what `keytether lock` does): the key's next use asks for its passphrase again.

import { actionToken, getJson, postJson } from '../api.js';
import { el } from '../dom.js';

export const id = 'keys';
const REFRESH_MS = 5000;

function left(seconds) {
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

export function mount(container) {
  const rows = el('tbody');
  const problem = el('p', { class: 'problem', hidden: true });
  const lock = async (keygrip) => {
    try {
      await postJson('/api/keys/lock', { keygrip }, await actionToken());
      problem.hidden = true;
      await refresh();
    } catch (e) {
      problem.hidden = false;
      problem.textContent = e.message;
    }
  };
  container.append(
    el('h2', {}, 'Unlocked keys'),
    problem,
    el(
      'table',
      { class: 'keys' },
      el('thead', {}, el('tr', {}, ...['key', 'forgotten in', ''].map((h) => el('th', {}, h)))),
      rows,
    ),
    el('button', { class: 'lock-all', onclick: () => lock('all') }, 'Lock all now'),
  );
  const refresh = async () => {
    const keys = await getJson('/api/keys');
    rows.replaceChildren(
      ...(keys.length === 0
        ? [el('tr', {}, el('td', { colspan: 3, class: 'empty' }, 'no unlocked keys'))]
        : keys.map((k) =>
            el(
              'tr',
              { dataset: { keygrip: k.keygrip } },
              el('td', { class: 'fpr' }, k.fingerprint ?? k.keygrip),
              el('td', {}, left(k.expiresInS)),
              el(
                'td',
                {},
                el('button', { class: 'lock', onclick: () => lock(k.keygrip) }, 'Lock now'),
              ),
            ),
          )),
    );
  };
  refresh().catch(() => {});
  setInterval(() => refresh().catch(() => {}), REFRESH_MS);
}
