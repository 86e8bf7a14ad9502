// Tokens this holder issued (what `keytether token list` shows), with revoke. New tokens are
// made with `keytether token create`, which prints the secret once.

import { actionToken, getJson, postJson } from '../api.js';
import { el } from '../dom.js';

export const id = 'tokens';

export function mount(container) {
  const rows = el('tbody');
  const problem = el('p', { class: 'problem', hidden: true });
  container.append(
    el('h2', {}, 'Tokens'),
    problem,
    el(
      'table',
      { class: 'tokens' },
      el(
        'thead',
        {},
        el('tr', {}, ...['id', 'label', 'ops', 'uses', 'expires', ''].map((h) => el('th', {}, h))),
      ),
      rows,
    ),
  );
  const refresh = async () => {
    const list = await getJson('/api/tokens');
    rows.replaceChildren(
      ...(list.length === 0
        ? [el('tr', {}, el('td', { colspan: 6, class: 'empty' }, 'no tokens'))]
        : list.map((t) =>
            el(
              'tr',
              { dataset: { id: t.id } },
              el('td', {}, t.id),
              el('td', {}, t.label ?? ''),
              el('td', {}, t.ops.join(',')),
              el('td', {}, t.maxUses === null ? String(t.uses) : `${t.uses}/${t.maxUses}`),
              el('td', {}, t.revoked ? 'revoked' : t.expires),
              el(
                'td',
                {},
                t.revoked
                  ? ''
                  : el(
                      'button',
                      {
                        class: 'revoke',
                        onclick: async () => {
                          try {
                            await postJson(
                              `/api/tokens/${encodeURIComponent(t.id)}/revoke`,
                              {},
                              await actionToken(),
                            );
                            await refresh();
                          } catch (e) {
                            problem.hidden = false;
                            problem.textContent = e.message;
                          }
                        },
                      },
                      'Revoke',
                    ),
              ),
            ),
          )),
    );
  };
  refresh().catch(() => {});
}
