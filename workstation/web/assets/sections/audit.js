// The audit log as `keytether audit list` and `audit summary` read it: filters, whether the hash
// chain holds, operations per day by decision (a bar per day), and the latest matching records.

import { getJson } from '../api.js';
import { el } from '../dom.js';

export const id = 'audit';
const DECISIONS = ['allowed', 'confirmed', 'denied', 'canceled', 'failed'];
const FIELDS = [
  ['key', 'key (fingerprint, key id, SHA256:)'],
  ['host', 'host'],
  ['token', 'token id'],
  ['since', 'since (2026-12-01, 24h)'],
  ['until', 'until'],
];

function chainText(chain) {
  if (chain.ok) return `hash chain intact (${chain.records} records)`;
  return chain.record
    ? `hash chain broken at record ${chain.record}: ${chain.reason}`
    : `hash chain: ${chain.reason}`;
}

export function mount(container) {
  const inputs = Object.fromEntries(
    FIELDS.map(([name, hint]) => [name, el('input', { name, placeholder: hint, size: 18 })]),
  );
  const decision = el(
    'select',
    { name: 'decision' },
    el('option', { value: '' }, 'any decision'),
    ...DECISIONS.map((d) => el('option', { value: d }, d)),
  );
  const chain = el('p', { class: 'chain' });
  const problem = el('p', { class: 'problem', hidden: true });
  const counts = el('tbody');
  const records = el('tbody');
  const matched = el('p', { class: 'matched' });
  const form = el(
    'form',
    { class: 'audit-filter' },
    ...Object.values(inputs),
    decision,
    el('button', { type: 'submit' }, 'Filter'),
  );
  container.append(
    el('h2', {}, 'Audit log'),
    form,
    problem,
    chain,
    el(
      'table',
      { class: 'days' },
      el(
        'thead',
        {},
        el('tr', {}, ...['day', 'total', ...DECISIONS, ''].map((h) => el('th', {}, h))),
      ),
      counts,
    ),
    matched,
    el(
      'table',
      { class: 'records' },
      el(
        'thead',
        {},
        el(
          'tr',
          {},
          ...['time', 'front', 'host', 'op', 'key', 'decision'].map((h) => el('th', {}, h)),
        ),
      ),
      records,
    ),
  );

  const load = async () => {
    const q = new URLSearchParams();
    for (const [name, input] of Object.entries(inputs)) if (input.value) q.set(name, input.value);
    if (decision.value) q.set('decision', decision.value);
    let r;
    try {
      r = await getJson(`/api/audit?${q}`);
    } catch (e) {
      problem.hidden = false;
      problem.textContent = `the filter was refused (${e.message})`;
      return;
    }
    problem.hidden = true;
    chain.textContent = chainText(r.chain);
    chain.dataset.ok = String(r.chain.ok);
    const most = Math.max(1, ...r.days.map((d) => d.total));
    counts.replaceChildren(
      ...r.days.map((d) => {
        const bar = el('div', { class: 'bar' });
        // CSSOM, not a style attribute: the CSP allows no inline style.
        bar.style.width = `${Math.round((d.total / most) * 100)}%`;
        return el(
          'tr',
          { dataset: { day: d.day } },
          el('td', {}, d.day),
          el('td', { class: 'total' }, d.total),
          ...DECISIONS.map((k) => el('td', { class: k }, d[k])),
          el('td', { class: 'chart' }, bar),
        );
      }),
    );
    matched.textContent = `${r.matched} matching of ${r.total} records; the latest ${r.records.length} below`;
    matched.dataset.matched = String(r.matched);
    records.replaceChildren(
      ...r.records.map((rec) =>
        el(
          'tr',
          {},
          el('td', {}, rec.time),
          el('td', {}, rec.front),
          el('td', {}, rec.host ?? ''),
          el('td', {}, rec.op),
          el('td', { class: 'fpr' }, rec.fingerprint ?? rec.keygrip ?? ''),
          el('td', {}, rec.decision),
        ),
      ),
    );
  };
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    load();
  });
  load();
}
