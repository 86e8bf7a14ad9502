// The approval page: each section is its own module with mount(container, context); the page
// only starts the session, opens the live event stream and hands both to the sections.

import { startSession } from './api.js';
import { el } from './dom.js';
import * as pending from './sections/pending.js';
import * as fronts from './sections/fronts.js';
import * as tokens from './sections/tokens.js';
import * as keys from './sections/keys.js';
import * as audit from './sections/audit.js';

const SECTIONS = [pending, fronts, keys, tokens, audit];

async function start() {
  const connection = document.getElementById('connection');
  const notice = document.getElementById('notice');
  const ok = await startSession().catch(() => false);
  if (!ok) {
    notice.hidden = false;
    notice.textContent =
      'This link was used already. Run "keytether open" (or look at the agent\'s output) for a new one.';
  }
  const events = new EventSource('/api/events');
  events.addEventListener('open', () => {
    connection.textContent = 'live';
    document.body.dataset.state = 'live';
  });
  events.addEventListener('error', () => {
    connection.textContent = 'not connected to the agent';
    document.body.dataset.state = 'offline';
  });
  const main = document.getElementById('sections');
  for (const section of SECTIONS) {
    const container = el('section', { id: section.id });
    main.append(container);
    section.mount(container, { events });
  }
}

start();
