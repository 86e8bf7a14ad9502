// Pending confirmations, live: who asks (the transport's facts plain, the server's claims
// labelled "reported"), which key and operation, the content with its provenance, and the
// answers. The list is replaced whole on every event; a request answered elsewhere disappears.

import { postJson } from '../api.js';
import { el, label } from '../dom.js';

export const id = 'pending';

const MINUTES = [1, 5, 10, 30, 60];

function fact(name, value, provenance) {
  if (value === undefined) return [];
  return [el('dt', {}, name), el('dd', {}, value, provenance ? label(provenance) : undefined)];
}

function request(r, onError) {
  const answer = (decision, forMinutes) => async (ev) => {
    for (const b of ev.target.closest('.request').querySelectorAll('button')) b.disabled = true;
    try {
      await postJson(`/api/pending/${encodeURIComponent(r.id)}/answer`, {
        token: r.token,
        decision,
        ...(forMinutes ? { forMinutes } : {}),
      });
    } catch (e) {
      onError(`${r.id}: ${e.message}`);
    }
  };
  const minutes = el(
    'select',
    { class: 'minutes', 'aria-label': 'minutes' },
    ...MINUTES.map((m) => el('option', { value: m, selected: m === 10 }, `${m} min`)),
  );
  const forButton = el('button', { class: 'approve-for' }, 'Approve for 10 minutes');
  minutes.addEventListener('change', () => {
    forButton.textContent = `Approve for ${minutes.value} minutes`;
  });
  forButton.addEventListener('click', (ev) => answer('approve', Number(minutes.value))(ev));
  const q = r.requester;
  const content = r.content
    ? [
        el('h4', {}, `content: ${r.content.kind}`, label('verified')),
        el('pre', { class: 'content' }, r.content.lines.join('\n')),
      ]
    : r.op === 'sign'
      ? [
          el(
            'p',
            { class: 'blind-why' },
            label('blind'),
            ` ${r.blindWhy ?? 'the holder cannot see what it signs'}`,
          ),
        ]
      : [];
  return el(
    'article',
    { class: 'request', dataset: { id: r.id } },
    el(
      'h3',
      {},
      `${r.op} with key ${r.key.fingerprint}`,
      r.verification ? label(r.verification) : undefined,
    ),
    el(
      'dl',
      {},
      ...fact('front', q.front),
      ...fact('host', q.host),
      ...fact('token', q.tokenId),
      ...fact('relay says from', q.relayPeer, 'reported'),
      ...fact('user', q.user, 'reported'),
      ...fact('process', q.process, 'reported'),
      ...fact('key', `${r.key.algorithm} ${r.key.keygrip}`),
      ...fact('asked at', r.createdAt),
    ),
    ...content,
    el(
      'div',
      { class: 'actions' },
      el('button', { class: 'approve', onclick: answer('approve') }, 'Approve once'),
      minutes,
      forButton,
      el('button', { class: 'deny', onclick: answer('deny') }, 'Deny'),
    ),
  );
}

export function mount(container, { events }) {
  const list = el('div', { class: 'list' });
  const problem = el('p', { class: 'problem', hidden: true });
  container.append(el('h2', {}, 'Waiting for you'), problem, list);
  const onError = (text) => {
    problem.hidden = false;
    problem.textContent = text;
  };
  events.addEventListener('pending', (ev) => {
    const items = JSON.parse(ev.data);
    list.replaceChildren(
      ...(items.length === 0
        ? [el('p', { class: 'empty' }, 'Nothing is waiting.')]
        : items.map((r) => request(r, onError))),
    );
  });
}
