// Connected fronts and relays, from the agent's status document (what `keytether status` shows).

import { getJson } from '../api.js';
import { el } from '../dom.js';

export const id = 'fronts';
const REFRESH_MS = 5000;

export function mount(container) {
  const fronts = el('tbody');
  const relays = el('tbody');
  container.append(
    el('h2', {}, 'Connected'),
    el(
      'table',
      { class: 'fronts' },
      el(
        'thead',
        {},
        el('tr', {}, el('th', {}, 'front'), el('th', {}, 'since'), el('th', {}, 'requests')),
      ),
      fronts,
    ),
    el(
      'table',
      { class: 'relays' },
      el(
        'thead',
        {},
        el('tr', {}, el('th', {}, 'relay'), el('th', {}, 'state'), el('th', {}, 'streams')),
      ),
      relays,
    ),
  );
  const refresh = async () => {
    try {
      const doc = await getJson('/api/status');
      fronts.replaceChildren(
        ...doc.fronts.map((f) =>
          el(
            'tr',
            {},
            el('td', {}, f.host ? `${f.front} ${f.host}` : f.front),
            el('td', {}, f.since),
            el('td', {}, f.requests),
          ),
        ),
      );
      relays.replaceChildren(
        ...(doc.relays.length === 0
          ? [el('tr', {}, el('td', { colspan: 3, class: 'empty' }, 'no relays'))]
          : doc.relays.map((r) =>
              el(
                'tr',
                {},
                el('td', {}, r.url),
                el('td', {}, r.lastError ? `${r.state} (${r.lastError})` : r.state),
                el('td', {}, r.streams ?? ''),
              ),
            )),
      );
    } catch {
      // The next refresh tries again; the connection badge says when the agent is gone.
    }
  };
  refresh();
  setInterval(refresh, REFRESH_MS);
}
