// keytether status: what the running `keytether agent` of this home is doing, read from its
// control socket: who is connected, which keys are unlocked and for how long, what was asked.

import { displayField } from '../../protocol/display-text.js';
import type { Command } from 'commander';
import { requestStatus, type StatusDocument } from '../../workstation/control/control.js';
import { UserError } from '../../system/user-error.js';
import { action, examples, packageVersion, resolveHome } from '../program.js';

/** `9m 58s`, `1h 02m`, `45s`: remaining cache time, coarse enough to read at a glance. */
export function formatRemaining(totalS: number): string {
  const s = Math.max(0, Math.floor(totalS));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (h > 0) return `${h}h ${String(m).padStart(2, '0')}m`;
  if (m > 0) return `${m}m ${String(sec).padStart(2, '0')}s`;
  return `${sec}s`;
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

// The agent is trusted, but what it relays (host names from ssh_config, relay URLs) must not
// drive the terminal.
function safe(s: string): string {
  return displayField(s, 1000);
}

export function formatStatus(doc: StatusDocument): string {
  const out: string[] = [];
  const started = `keytether ${safe(doc.version)}, since ${safe(doc.startedAt)}`;
  if (doc.command !== undefined) {
    out.push(`holder of ${safe(doc.command)}: pid ${doc.pid}, ${started}`);
  } else {
    out.push(`agent: pid ${doc.pid}, ${started}`);
  }
  if (doc.agentSocket !== undefined) out.push(`  gpg-agent socket: ${safe(doc.agentSocket)}`);
  out.push('fronts:');
  for (const f of doc.fronts) {
    const who = f.host !== undefined ? `${f.front} ${safe(f.host)}` : f.front;
    out.push(`  ${who}: since ${safe(f.since)}, ${plural(f.requests, 'request')}`);
  }
  out.push('relays:');
  if (doc.relays.length === 0) out.push('  none');
  for (const r of doc.relays) {
    const streams = r.streams !== undefined ? `, ${plural(r.streams, 'stream')}` : '';
    const why = r.lastError !== undefined ? ` (last attempt: ${safe(r.lastError)})` : '';
    out.push(`  ${safe(r.url)}: ${r.state}${streams}${why}`);
  }
  out.push('unlocked keys:');
  if (doc.unlocked.length === 0) out.push('  none');
  for (const u of doc.unlocked) {
    const name =
      u.fingerprint !== undefined
        ? `${safe(u.fingerprint)} (keygrip ${safe(u.keygrip)})`
        : `keygrip ${safe(u.keygrip)}`;
    out.push(`  ${name}: forgotten in ${formatRemaining(u.expiresInS)}`);
  }
  if (doc.rateLimits && doc.rateLimits.length > 0) {
    out.push('rate limits:');
    for (const a of doc.rateLimits) {
      const state = a.active ? 'refusing' : 'back under the limit';
      out.push(
        `  ${a.kind} ${safe(a.id)}: over its rate since ${safe(a.since)}, ${plural(a.refused, 'request')} refused; ${state}`,
      );
    }
  }
  out.push('recent operations:');
  if (doc.recent.length === 0) out.push('  none');
  for (const r of [...doc.recent].reverse()) {
    const who =
      r.front === 'relay'
        ? `relay token ${safe(r.tokenId ?? '?')}${r.tokenLabel !== undefined ? ` "${safe(r.tokenLabel)}"` : ''}${r.relayPeer !== undefined ? ` (relay says from ${safe(r.relayPeer)})` : ''}`
        : r.host !== undefined
          ? `${r.front} ${safe(r.host)}`
          : r.front;
    const key = r.fingerprint ?? r.keygrip;
    const what = key !== undefined ? `${r.op} ${safe(key)}` : `${r.op}`;
    const how =
      r.verification !== undefined && r.op === 'sign' && r.front !== 'local'
        ? ` ${safe(r.verification)}`
        : '';
    const said = r.summary !== undefined ? ` (${safe(r.summary)})` : '';
    const by =
      r.requestedBy !== undefined
        ? ` by ${safe(r.requestedBy)}${r.front === 'local' ? '' : ' (server says)'}`
        : '';
    out.push(`  ${safe(r.time)} ${what}${how} for ${who}${by}: ${safe(r.decision)}${said}`);
  }
  return `${out.join('\n')}\n`;
}

export function register(program: Command): void {
  program
    .command('status')
    .addHelpText('after', examples('keytether status', 'keytether status --json'))
    .description('connected fronts and relays, unlocked keys, recent operations')
    .option('--json', 'print the status as one JSON document')
    .action(
      action(async (flags: { json?: boolean }, cmd: Command) => {
        const globals = cmd.optsWithGlobals() as { home?: string };
        const home = resolveHome(globals);
        const doc = await requestStatus(home, { version: packageVersion() });
        if (!doc) {
          throw new UserError(
            `no keytether agent is running for ${home}; start one with keytether agent`,
          );
        }
        process.stdout.write(flags.json ? `${JSON.stringify(doc, null, 2)}\n` : formatStatus(doc));
        return 0;
      }),
    );
}
