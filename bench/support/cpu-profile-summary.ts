// Where a process spent its CPU, from a `node --cpu-prof` profile (as bench/relay.ts writes with
// BENCH_CPU_PROF=DIR): self time by area (TLS, WebSocket, tunnel, …) and the top functions, as
// shares of the busy (non-idle) time.
//   node dist/bench/support/cpu-profile-summary.js FILE.cpuprofile… [--top N]
// Natives are named by their binding: `writeBuffer` is a write(2) to a socket or file (for a TLS
// socket it includes the encryption), `writeUtf8String` a string written to a socket.

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const MAX_PROFILE_BYTES = 512 * 1024 * 1024;

/** Which part of the stack a frame belongs to, by its script. */
const AREAS: [string, RegExp][] = [
  ['TLS (node:tls, js_stream_socket)', /(_tls_|node:tls|js_stream_socket|tls_wrap)/],
  ['streams (node:stream)', /internal\/streams\//],
  ['net/socket (node:net)', /node:net|internal\/net|stream_base_commons/],
  ['ws', /node_modules\/ws\//],
  ['tunnel', /\/protocol\/tunnel\//],
  ['assuan / agent protocol', /\/protocol\/(assuan|agent)\//],
  ['relay mux / relay client', /\/protocol\/relay\/|relay-client|\/server\/connect/],
  ['relay server', /\/server\/relay\//],
  ['holder / keystore / audit / tokens', /\/workstation\//],
  ['crypto libs (@noble, openpgp)', /node_modules\/(@noble|openpgp)/],
  ['fastify / pino', /node_modules\/(fastify|pino|@fastify|avvio|light-my-request)/],
  ['other node internals', /^node:|internal\//],
];

function area(n: ProfileNode): string {
  const { functionName, url } = n.callFrame;
  if (url === '') return functionName.startsWith('(') ? functionName : `native: ${functionName}`;
  return AREAS.find(([, re]) => re.test(url))?.[0] ?? 'other';
}

function summarize(file: string, top: number): void {
  const text = readFileSync(file, 'utf8');
  if (text.length > MAX_PROFILE_BYTES) throw new Error(`${file}: larger than the limit`);
  const prof = JSON.parse(text) as Profile;
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < prof.samples.length; i++) {
    const id = prof.samples[i]!;
    self.set(id, (self.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0));
  }
  const areas = new Map<string, number>();
  const fns = new Map<string, number>();
  let busy = 0;
  for (const [id, us] of self) {
    const n = byId.get(id);
    if (!n || n.callFrame.functionName === '(idle)') continue;
    busy += us;
    const a = area(n);
    areas.set(a, (areas.get(a) ?? 0) + us);
    const where = n.callFrame.url
      ? `${path.basename(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`
      : '';
    const key = `${n.callFrame.functionName || '(anonymous)'} ${where}`.trim();
    fns.set(key, (fns.get(key) ?? 0) + us);
  }
  const pct = (us: number) => `${((100 * us) / busy).toFixed(1).padStart(5)}%`;
  console.log(`${path.basename(file)}: ${(busy / 1e6).toFixed(2)} s busy`);
  // Many natives take a sliver each; below 0.5% they are one line.
  let smallNatives = 0;
  for (const [a, us] of [...areas].sort((x, y) => y[1] - x[1])) {
    if (a.startsWith('native: ') && us < busy / 200) smallNatives += us;
    else console.log(`  ${pct(us)}  ${a}`);
  }
  if (smallNatives > 0) console.log(`  ${pct(smallNatives)}  native: each below 0.5%`);
  console.log('  top functions (self):');
  for (const [f, us] of [...fns].sort((x, y) => y[1] - x[1]).slice(0, top)) {
    console.log(`    ${pct(us)}  ${f}`);
  }
}

const { values, positionals } = parseArgs({
  options: { top: { type: 'string', default: '15' } },
  allowPositionals: true,
});
const top = Number(values.top);
if (positionals.length === 0 || !Number.isInteger(top) || top < 1) {
  process.stderr.write('usage: cpu-profile-summary.js FILE.cpuprofile… [--top N]\n');
  process.exit(2);
}
for (const f of positionals) summarize(f, top);
