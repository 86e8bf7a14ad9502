// `keytether approve`, `keytether deny`, `keytether open`: the confirmations waiting at the running
// agent, answered from a terminal as they would be at the pinentry or on the approval page (the
// first answer from any of them decides), and the page itself opened with a fresh secret.

import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { displayField } from '../../protocol/display-text.js';
import type { PendingApproval } from '../../workstation/approvals/pending.js';
import {
  answerApproval,
  requestApprovals,
  requestWebUrl,
} from '../../workstation/control/approvals-client.js';
import { UsageError } from '../../system/user-error.js';
import { action, durationArg, examples, resolveHome } from '../program.js';
import { MAX_REMEMBER_MS } from '../../workstation/approvals/broker.js';

type Globals = { home?: string };

function out(cmd: Command): (s: string) => void {
  const write = cmd.configureOutput().writeOut;
  return (s) => (write ? write(s) : process.stdout.write(s));
}

const s = (v: string) => displayField(v, 1000);

/** One waiting request as the terminal shows it; the server's claims are labelled so. */
export function formatPending(r: PendingApproval): string {
  const who = [
    r.requester.front,
    ...(r.requester.host !== undefined ? [`host ${s(r.requester.host)}`] : []),
    ...(r.requester.tokenId !== undefined ? [`token ${s(r.requester.tokenId)}`] : []),
  ].join(', ');
  const lines = [
    `${r.id}  ${r.op} with key ${s(r.key.fingerprint)}${r.verification ? ` (${r.verification})` : ''} for ${who}`,
  ];
  if (r.requester.relayPeer !== undefined)
    lines.push(`  relay says from: ${s(r.requester.relayPeer)} (reported)`);
  if (r.requester.user !== undefined) lines.push(`  user: ${s(r.requester.user)} (reported)`);
  if (r.requester.process !== undefined)
    lines.push(`  process: ${s(r.requester.process)} (reported)`);
  for (const l of r.content?.lines ?? []) lines.push(`  ${s(l)}`);
  if (r.blindWhy !== undefined) lines.push(`  blind: ${s(r.blindWhy)}`);
  return `${lines.join('\n')}\n`;
}

function onPath(program: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    try {
      accessSync(path.join(dir, program), constants.X_OK);
      return path.join(dir, program);
    } catch {
      // not here
    }
  }
  return undefined;
}

const ID_ARG = /^[0-9a-f]{12}$/;
function requestId(id: string): string {
  if (!ID_ARG.test(id)) {
    throw new UsageError(`'${id.slice(0, 40)}' is not a request id; keytether approve lists them`);
  }
  return id;
}

export function register(program: Command): void {
  program
    .command('approve')
    .addHelpText('after', examples('keytether approve', 'keytether approve 3f9c0a1b2c4d --for 10m'))
    .description(
      'list the confirmations waiting at the agent, or approve one (also answerable at the pinentry and the page)',
    )
    .argument('[id]', 'the request to approve, as the listing shows it')
    .option(
      '--for <duration>',
      'approve this key for this host and operation for this long, e.g. 10m (at most 24h)',
      durationArg,
    )
    .action(
      action(async (id: string | undefined, opts: { for?: number }, cmd: Command) => {
        const home = resolveHome(cmd.optsWithGlobals<Globals>());
        const write = out(cmd);
        if (id === undefined) {
          if (opts.for !== undefined)
            throw new UsageError('--for needs the id of the request to approve');
          const list = await requestApprovals(home);
          write(
            list.length === 0 ? 'no confirmations are waiting\n' : list.map(formatPending).join(''),
          );
          return;
        }
        if (opts.for !== undefined && opts.for > MAX_REMEMBER_MS) {
          throw new UsageError('--for is at most 24h');
        }
        await answerApproval(home, requestId(id), true, opts.for);
        write(`approved ${id}\n`);
      }),
    );
  program
    .command('deny')
    .addHelpText('after', examples('keytether deny 3f9c0a1b2c4d'))
    .description(
      'deny a confirmation waiting at the agent (the requester hears "Operation cancelled")',
    )
    .argument('<id>', 'the request to deny, as keytether approve lists it')
    .action(
      action(async (id: string, _opts: unknown, cmd: Command) => {
        await answerApproval(resolveHome(cmd.optsWithGlobals<Globals>()), requestId(id), false);
        out(cmd)(`denied ${id}\n`);
      }),
    );
  program
    .command('open')
    .addHelpText('after', examples('keytether open'))
    .description(
      "open the agent's approval page (keytether agent --web) with a fresh one-time link",
    )
    .action(
      action(async (_opts: unknown, cmd: Command) => {
        const url = await requestWebUrl(resolveHome(cmd.optsWithGlobals<Globals>()));
        const desktop = process.env.DISPLAY || process.env.WAYLAND_DISPLAY;
        const opener = desktop ? onPath('xdg-open') : undefined;
        if (!opener) {
          // The link is good for one page load: printed only to the user's own terminal.
          out(cmd)(`${url}\n`);
          return;
        }
        const child = spawn(opener, [url], { stdio: 'ignore', detached: true });
        child.on('error', () => {});
        child.unref();
        out(cmd)('opened the approval page\n');
      }),
    );
}
