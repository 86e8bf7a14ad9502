// `keytether ssh`'s readers of OpenSSH files: ssh_config with the command line's target and -o
// options (workstation/ssh/config.ts, over the ssh-config package) and known_hosts
// (workstation/ssh/known-hosts.ts).
// Oracle: resolving a target throws nothing but UserError/UsageError, each one line; an accepted
// target has a port from 1 to 65535, a host name without shell syntax and absolute key paths;
// known_hosts parsing and the host key decision never throw; a host recorded with its key, and
// not revoked, is a match.

import fc from 'fast-check';
import { resolveSshTargetFromText } from '../../../workstation/ssh/config.js';
import {
  decideHostKey,
  knownHostsName,
  parseKnownHosts,
} from '../../../workstation/ssh/known-hosts.js';
import { UserError } from '../../../system/user-error.js';
import { violation, type FuzzTarget } from '../harness.js';
import { mutateText, mutations, rawText } from '../gen.js';

export interface SshCase {
  target: string;
  options: string[];
  config: string;
  knownHosts: string;
  host: string;
  port: number;
  blob: Buffer;
  /** Append `host keytype base64(blob)` to knownHosts: the lookup must then match. */
  record: boolean;
}

const KEYWORDS = [
  'Host',
  'Match',
  'HostName',
  'User',
  'Port',
  'IdentityFile',
  'IdentitiesOnly',
  'IdentityAgent',
  'UserKnownHostsFile',
  'GlobalKnownHostsFile',
  'StrictHostKeyChecking',
  'HostKeyAlias',
  'HashKnownHosts',
  'ConnectTimeout',
  'ServerAliveInterval',
  'ServerAliveCountMax',
  'ProxyJump',
  'ProxyCommand',
  'CertificateFile',
  'Include',
  'nosuch',
];
const VALUES = [
  '*',
  'example.com',
  '%h.internal',
  '%%',
  '%x',
  '%',
  '22',
  '0',
  '65536',
  'abc',
  'yes',
  'no',
  'ask',
  'accept-new',
  'maybe',
  'none',
  '~/.ssh/id_ed25519',
  'id_rsa',
  'SSH_AUTH_SOCK',
  '$SOCK',
  '"quoted value"',
  '10',
  '1000000',
  'host !other',
  'all',
  'exec "true"',
  '-oops',
  'a;b',
];
const hostName = fc.oneof(
  fc.constantFrom('example.com', 'h1', 'EXAMPLE.org', '10.0.0.1', '[::1]', 'a-b.c'),
  fc.stringMatching(/^[a-z0-9][a-z0-9.-]{0,20}$/),
  fc.string({ maxLength: 20 }),
);
const configLine = fc
  .record({
    k: fc.constantFrom(...KEYWORDS),
    sep: fc.constantFrom(' ', '=', ' = ', '\t'),
    v: fc.oneof(fc.constantFrom(...VALUES), fc.string({ maxLength: 20 }), hostName),
    indent: fc.constantFrom('', '  '),
  })
  .map(({ k, sep, v, indent }) => `${indent}${k}${sep}${v}`);
const configArb = fc
  .record({ lines: fc.array(configLine, { maxLength: 10 }), m: mutations(2) })
  .map(({ lines, m }) => mutateText(lines.join('\n'), m));
const optionArb = fc.oneof(
  configLine.map((l) => l.trim()),
  fc.constantFrom('Port=2222', 'User=git', 'Host=x', 'Include=/etc/passwd', '=v', 'Port', 'A B'),
);
const targetArb = fc.oneof(
  hostName,
  fc
    .tuple(fc.constantFrom('git', 'root', '', 'a b', 'me@x'), hostName)
    .map(([u, h]) => `${u}@${h}`),
  fc
    .tuple(hostName, fc.oneof(fc.integer({ min: 0, max: 70000 }), fc.constant(22)))
    .map(([h, p]) => `ssh://${h}:${p}`),
  fc.constantFrom('-oProxyCommand=x', 'ssh://', '@', 'host;rm', ''),
);

const blobArb = fc
  .record({
    type: fc.constantFrom('ssh-ed25519', 'ecdsa-sha2-nistp256', 'ssh-rsa', ''),
    key: fc.uint8Array({ maxLength: 40 }),
  })
  .map(({ type, key }) => {
    const t = Buffer.from(type);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(t.length);
    return Buffer.concat([len, t, Buffer.from(key)]);
  });
const khLine = fc.oneof(
  fc
    .record({
      marker: fc.constantFrom('', '@revoked ', '@cert-authority ', '@bogus '),
      hosts: fc.oneof(
        hostName,
        fc
          .array(
            fc.oneof(hostName, fc.constantFrom('*', '!*.bad', '?', '[h]:2222', '*.example.com')),
            { maxLength: 3 },
          )
          .map((a) => a.join(',')),
        fc.constant('|1|c2FsdA==|AAAAAAAAAAAAAAAAAAAAAAAAAAA='),
      ),
      type: fc.constantFrom('ssh-ed25519', 'ssh-rsa', 'x'),
      blob: blobArb,
    })
    .map(({ marker, hosts, type, blob }) => `${marker}${hosts} ${type} ${blob.toString('base64')}`),
  fc.constantFrom('# comment', '', '   ', 'host only', 'h t !!!notbase64'),
);
const knownHostsArb = fc
  .record({ lines: fc.array(khLine, { maxLength: 6 }), m: mutations(2) })
  .map(({ lines, m }) => mutateText(lines.join('\n'), m));

const ENV = { HOME: '/fuzz/home', SOCK: '/fuzz/agent.sock', SSH_AUTH_SOCK: '/fuzz/ssh.sock' };
const FORBIDDEN = /[\s\x00-\x1f\x7f'`"$\\;&<>|(){}]/;

export const sshTarget: FuzzTarget<SshCase> = {
  name: 'ssh',
  oracle:
    'resolving throws only UserError/UsageError, one line; accepted targets are valid; known_hosts ' +
    'parsing/decision never throw and a recorded, unrevoked key matches',
  generators: [
    {
      name: 'format',
      arb: fc.record({
        target: targetArb,
        options: fc.array(optionArb, { maxLength: 3 }),
        config: configArb,
        knownHosts: knownHostsArb,
        host: hostName,
        port: fc.oneof(fc.constant(22), fc.integer({ min: 1, max: 65535 })),
        blob: blobArb,
        record: fc.boolean(),
      }),
    },
    {
      name: 'bytes',
      arb: fc.record({
        target: rawText(60),
        options: fc.array(rawText(60), { maxLength: 2 }),
        config: rawText(1000),
        knownHosts: rawText(1000),
        host: rawText(30),
        port: fc.integer({ min: 1, max: 65535 }),
        blob: fc.uint8Array({ maxLength: 80 }).map((a) => Buffer.from(a)),
        record: fc.constant(false),
      }),
    },
  ],
  check(c) {
    try {
      const t = resolveSshTargetFromText(
        { target: c.target, options: c.options, env: ENV, home: '/fuzz/home', localUser: 'fuzz' },
        [c.config],
      );
      if (!(t.port >= 1 && t.port <= 65535 && Number.isInteger(t.port)))
        violation(`port ${t.port}`);
      if (t.hostName === '' || FORBIDDEN.test(t.hostName) || t.hostName.startsWith('-')) {
        violation(`host name ${JSON.stringify(t.hostName)} accepted`);
      }
      for (const f of [...t.identityFiles, ...t.knownHostsFiles])
        if (!f.startsWith('/')) violation(`relative path ${f}`);
    } catch (e) {
      if (!(e instanceof UserError)) throw e;
      if (/[\r\n]/.test(e.message))
        violation(`ssh refusal spans lines: ${JSON.stringify(e.message.slice(0, 120))}`);
    }

    const name = knownHostsName(c.host, c.port);
    const simple = /^[A-Za-z0-9.-]+$/.test(c.host);
    const text =
      c.record && simple
        ? `${c.knownHosts}\n${name} ssh-ed25519 ${c.blob.toString('base64')}\n`
        : c.knownHosts;
    const warnings: string[] = [];
    const entries = parseKnownHosts(text, '/fuzz/known_hosts', warnings);
    for (const w of warnings) if (/[\r\n]/.test(w)) violation('known_hosts warning spans lines');
    const r = decideHostKey(
      [{ file: '/fuzz/known_hosts', entries }],
      c.host,
      c.port,
      'ssh-ed25519',
      c.blob,
      warnings,
    );
    if (!['match', 'unknown', 'changed', 'revoked'].includes(r.status))
      violation(`status ${r.status}`);
    if (
      c.record &&
      simple &&
      c.blob.length > 0 &&
      !/@revoked/.test(c.knownHosts) &&
      r.status !== 'match'
    ) {
      violation(`a recorded key is ${r.status}, not a match`);
    }
  },
};
