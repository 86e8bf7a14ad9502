// A desktop notification pointing at the page when a confirmation starts waiting, through
// `notify-send` where it is installed; nowhere else, and never with the page's secret.

import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import type { PendingApproval } from '../approvals/pending.js';

function onPath(program: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, program);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/** A function that notifies about one request, or undefined when notify-send is absent. */
export function notifier(pageUrl: string): ((r: PendingApproval) => void) | undefined {
  const program = onPath('notify-send');
  if (!program) return undefined;
  return (r) => {
    const who = r.requester.host ?? r.requester.front;
    const body = `${r.op} with key ${r.key.fingerprint.slice(-16)} for ${who}: approve or deny at ${pageUrl}`;
    try {
      const child = spawn(
        program,
        ['--app-name=keytether', 'keytether: confirmation waiting', body],
        {
          stdio: 'ignore',
          detached: false,
        },
      );
      child.on('error', () => {});
      child.unref();
    } catch {
      // A notification is a convenience; the request still waits on every channel.
    }
  };
}
