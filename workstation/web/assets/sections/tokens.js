// Tokens this holder issued (what `keytether token list` shows), with revoke, and a form that
// does what `keytether token create` does (its fields are named after that command's flags, so
// the holder's sentences about --ttl or --ops fit). A new token's text is shown once, in a box
// the user empties with Done; nothing keeps it: not the page's storage, not the holder.

import { actionToken, getJson, postJson } from '../api.js';
import { el } from '../dom.js';

export const id = 'tokens';

const OPS = ['sign', 'decrypt', 'ssh-sign'];

function field(label, input) {
  return el('label', {}, label, ' ', input);
}

function createForm(onIssued, problem) {
  const keyList = el('datalist', { id: 'token-keys' });
  const inputs = {
    key: el('input', {
      name: 'key',
      list: 'token-keys',
      size: 44,
      placeholder: 'fingerprint or key id, comma-separated',
    }),
    ttl: el('input', { name: 'ttl', size: 6, placeholder: '1h' }),
    maxUses: el('input', { name: 'maxUses', size: 6, placeholder: 'no limit' }),
    label: el('input', { name: 'label', size: 16 }),
    relay: el('input', { name: 'relay', size: 28, placeholder: "the agent's relay" }),
  };
  const ops = OPS.map((op) =>
    el('input', { type: 'checkbox', name: 'ops', value: op, checked: op === 'sign' }),
  );
  const form = el(
    'form',
    { class: 'token-create' },
    keyList,
    field('--key', inputs.key),
    el('span', { class: 'ops' }, '--ops', ...ops.map((c) => el('label', {}, c, c.value))),
    field('--ttl', inputs.ttl),
    field('--max-uses', inputs.maxUses),
    field('--label', inputs.label),
    field('--relay', inputs.relay),
    el('button', { type: 'submit', class: 'create' }, 'Create token'),
  );
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const body = {
      key: inputs.key.value.split(/[\s,]+/).filter((k) => k !== ''),
      ops: ops
        .filter((c) => c.checked)
        .map((c) => c.value)
        .join(','),
      ttl: inputs.ttl.value,
      maxUses: inputs.maxUses.value,
      label: inputs.label.value,
      relay: inputs.relay.value,
    };
    try {
      const issued = await postJson('/api/tokens', body, await actionToken());
      problem.hidden = true;
      inputs.key.value = '';
      inputs.label.value = '';
      onIssued(issued);
    } catch (e) {
      problem.hidden = false;
      problem.textContent = e.message;
    }
  });
  getJson('/api/tokens/keys')
    .then((keys) =>
      keyList.replaceChildren(
        ...keys.map((k) => el('option', { value: k.fingerprint }, k.usage.join(','))),
      ),
    )
    .catch(() => {});
  return form;
}

/** The one showing of a new token's text; Done removes it from the page. */
function issuedBox(issued) {
  const text = el('textarea', { class: 'token-text', readonly: true, rows: 3, cols: 60 });
  text.value = issued.token;
  const box = el(
    'div',
    { class: 'issued', dataset: { id: issued.id } },
    el('p', {}, `Token ${issued.id}: copy it now, it is shown only once.`),
    text,
    ...issued.notes.map((n) => el('p', { class: 'note' }, n)),
    el(
      'div',
      { class: 'actions' },
      el(
        'button',
        {
          class: 'copy',
          type: 'button',
          onclick: () => navigator.clipboard?.writeText(text.value),
        },
        'Copy',
      ),
      el(
        'button',
        {
          class: 'done',
          type: 'button',
          onclick: () => {
            text.value = '';
            box.remove();
          },
        },
        'Done',
      ),
    ),
  );
  return box;
}

export function mount(container) {
  const rows = el('tbody');
  const problem = el('p', { class: 'problem', hidden: true });
  const shown = el('div', { class: 'issued-slot' });
  container.append(
    el('h2', {}, 'Tokens'),
    createForm((issued) => {
      for (const old of shown.querySelectorAll('textarea')) old.value = '';
      shown.replaceChildren(issuedBox(issued));
      refresh().catch(() => {});
    }, problem),
    shown,
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
