import t from 'tap';
import { ApprovalMemory } from '../workstation/policy/approvals.js';
import { parseConfig } from '../workstation/home/config.js';
import {
  approvalScope,
  decide,
  globMatch,
  keyMatches,
  processNames,
} from '../workstation/policy/policy.js';
import type { PolicyRequest } from '../workstation/policy/policy.js';

const FPR = 'AAAABBBBCCCCDDDDEEEEFFFF0000111122223333';
const PRIMARY = '9999888877776666555544443333222211110000';
const GRIP = '0123456789ABCDEF0123456789ABCDEF01234567';

function req(over: Partial<PolicyRequest> = {}): PolicyRequest {
  return {
    front: 'ssh',
    host: 'build1.ci.example.com',
    fingerprint: FPR,
    primaryFingerprint: PRIMARY,
    keygrip: GRIP,
    op: 'sign',
    certifyCapable: false,
    ...over,
  };
}

const rulesFrom = (toml: string) => parseConfig(toml, '/x/config.toml').policy;

t.test('defaults', async (t) => {
  t.match(decide([], req({ front: 'local', op: 'decrypt' })), { action: 'allow', rule: 'default' });
  t.match(decide([], req({ front: 'local', op: 'sign' })), { action: 'allow', rule: 'default' });
  t.match(decide([], req({ op: 'sign' })), {
    action: 'allow',
    rule: 'default',
    clearSign: 'preferred',
  });
  t.match(decide([], req({ front: 'relay', op: 'decrypt' })), {
    action: 'confirm',
    rule: 'default',
  });
  t.match(
    decide([], req({ op: 'sign', certifyCapable: true })),
    { action: 'allow', rule: 'default', clearSign: 'required' },
    'a certify-capable key signs for a remote only what the holder saw',
  );
  const own = rulesFrom('[[policy]]\nkey = "*"\nclear-sign = "off"\n');
  t.match(decide(own, req({ op: 'sign', certifyCapable: true })), {
    action: 'allow',
    rule: 'default',
    clearSign: 'off',
  });
});

t.test('first matching rule wins, in file order', async (t) => {
  const rules = rulesFrom(`
[[policy]]
front = "ssh"
op = "decrypt"
action = "deny"

[[policy]]
front = "*"
action = "confirm"

[[policy]]
front = "ssh"
action = "allow"
`);
  const d1 = decide(rules, req({ op: 'decrypt' }));
  t.equal(d1.action, 'deny');
  t.match(
    d1.rule,
    /^policy rule 1 in \/x\/config\.toml \(line 2\): front=ssh op=decrypt action=deny$/,
  );
  const d2 = decide(rules, req({ op: 'sign' }));
  t.equal(d2.action, 'confirm', 'rule 3 is shadowed by rule 2');
  t.match(d2.rule, /^policy rule 2 /);
  t.equal(decide(rules, req({ front: 'local' })).action, 'confirm', 'rules apply to local too');
});

t.test('certify = true lets policy require confirmation for certify-capable keys', async (t) => {
  const rules = rulesFrom('[[policy]]\nfront = "ssh"\ncertify = true\naction = "confirm"\n');
  t.equal(decide(rules, req({ certifyCapable: true })).action, 'confirm');
  t.equal(decide(rules, req({ certifyCapable: false })).action, 'allow', 'falls to default');
  const notCertify = rulesFrom('[[policy]]\ncertify = false\naction = "deny"\n');
  t.equal(decide(notCertify, req({ certifyCapable: false })).action, 'deny');
  t.equal(decide(notCertify, req({ certifyCapable: true })).action, 'allow');
});

t.test('host and token globbing', async (t) => {
  const rules = rulesFrom(`
[[policy]]
host = "*.CI.example.com"
action = "deny"
[[policy]]
token = "tok-?"
action = "confirm"
[[policy]]
host = "*"
action = "allow"
`);
  t.equal(decide(rules, req({ host: 'build1.ci.example.com' })).action, 'deny', 'case-insensitive');
  t.equal(decide(rules, req({ host: 'ci.example.com' })).action, 'allow', '* needs the dot');
  t.equal(decide(rules, req({ host: undefined, tokenId: 'tok-1' })).action, 'confirm');
  t.equal(decide(rules, req({ host: undefined, tokenId: 'tok-12' })).action, 'allow', '? is one');
  t.equal(decide(rules, req({ host: undefined })).action, 'allow', 'host = "*" matches no host');
  t.equal(decide(rules.slice(0, 2), req({ host: undefined })).action, 'allow', 'default');

  t.ok(globMatch('a*b*c', 'aXXbYYc'));
  t.notOk(globMatch('a*b*c', 'aXXbYY'));
  t.ok(globMatch('*', ''));
  t.notOk(globMatch('?', ''));
  t.notOk(globMatch('a*a*a*a*a*a*a*a*b', 'a'.repeat(200)), 'no runaway backtracking');
});

t.test('key matching: fingerprint, primary, keygrip, long key id, case-insensitive', async (t) => {
  const key = { fingerprint: FPR, primaryFingerprint: PRIMARY, keygrip: GRIP };
  t.ok(keyMatches(FPR.toLowerCase(), key));
  t.ok(keyMatches(PRIMARY, key), 'a primary fingerprint covers its subkeys');
  t.ok(keyMatches(GRIP.toLowerCase(), key));
  t.ok(keyMatches('0000111122223333', key), 'long key id');
  t.ok(keyMatches('0x3333222211110000', key), 'primary long key id, with 0x');
  t.notOk(keyMatches('AAAABBBBCCCCDDDD', key), 'a prefix of a v4 fingerprint is not its key id');
  t.notOk(keyMatches('1'.repeat(40), key));
  const v6 = { fingerprint: 'AB'.repeat(32), primaryFingerprint: 'AB'.repeat(32), keygrip: GRIP };
  t.ok(keyMatches('ABABABABABABABAB', v6), 'v6 key ids are the head');

  const rules = rulesFrom(
    `[[policy]]\nkey = "${FPR.slice(24).toLowerCase()}"\nop = "sign"\naction = "deny"\n`,
  );
  t.equal(decide(rules, req()).action, 'deny');
  t.equal(
    decide(rules, req({ fingerprint: '1'.repeat(40), primaryFingerprint: '2'.repeat(40) })).action,
    'allow',
  );
});

t.test('remember windows', async (t) => {
  const rules = rulesFrom(
    '[[policy]]\nfront = "ssh"\nop = "decrypt"\naction = "confirm"\nremember = "15m"\n',
  );
  const memory = new ApprovalMemory();
  const r = req({ op: 'decrypt' });
  let now = 1_000_000;
  const first = decide(rules, r, memory, now);
  t.match(first, { action: 'confirm', rememberMs: 900_000 });
  t.notOk(first.remembered);

  // The holder asks, the user says yes, the holder remembers.
  memory.grant(approvalScope(r), first.rememberMs!, now);
  now += 14 * 60_000;
  t.match(decide(rules, r, memory, now), { action: 'allow', remembered: true });
  t.equal(
    decide(rules, req({ op: 'decrypt', host: 'other.example' }), memory, now).action,
    'confirm',
    'other host',
  );
  t.equal(
    decide(rules, req({ op: 'decrypt', keygrip: 'F'.repeat(40) }), memory, now).action,
    'confirm',
    'other key',
  );
  t.equal(
    decide(rules, req({ op: 'decrypt', front: 'relay' }), memory, now).action,
    'confirm',
    'other front (default)',
  );
  t.equal(
    decide(rules, req({ op: 'decrypt', tokenId: 'tok' }), memory, now).action,
    'confirm',
    'other token',
  );
  now += 60_000;
  t.equal(decide(rules, r, memory, now).action, 'confirm', 'window over after 15 minutes');

  memory.grant(approvalScope(r), 1000, now);
  t.ok(memory.isGranted(approvalScope(r), now));
  memory.clear();
  t.notOk(memory.isGranted(approvalScope(r), now), 'clear forgets');
  memory.grant(approvalScope(r), 0, now);
  t.notOk(memory.isGranted(approvalScope(r), now), 'a zero window grants nothing');

  const noRemember = rulesFrom('[[policy]]\naction = "confirm"\n');
  t.equal(decide(noRemember, r).rememberMs, undefined);
  const deny = rulesFrom('[[policy]]\naction = "deny"\nremember = "1h"\n');
  memory.grant(approvalScope(r), 3_600_000, now);
  t.equal(decide(deny, r, memory, now).action, 'deny', 'a grant never overrides deny');
});

t.test('approval memory is bounded', async (t) => {
  const memory = new ApprovalMemory();
  for (let i = 0; i < 5000; i++) {
    memory.grant({ front: 'ssh', host: `h${i}`, keygrip: GRIP, op: 'sign' }, 60_000, 0);
  }
  t.ok(memory.size <= 4096);
  t.ok(memory.isGranted({ front: 'ssh', host: 'h4999', keygrip: GRIP, op: 'sign' }, 1));
  t.notOk(
    memory.isGranted({ front: 'ssh', host: 'h0', keygrip: GRIP, op: 'sign' }, 1),
    'oldest went',
  );
});

t.test('process: an allow rule matches only a named process or parent', async (t) => {
  const rules = rulesFrom(`
[[policy]]
front = "ssh"
op = "sign"
process = "git"
action = "allow"

[[policy]]
front = "ssh"
op = "sign"
action = "confirm"
`);
  const chain = processNames({
    name: 'gpg',
    command: '/usr/bin/gpg -bsau K',
    parents: [
      { pid: 3, name: 'git', command: 'git commit -S' },
      { pid: 2, name: 'bash', command: '-bash' },
    ],
  });
  t.same(chain, ['gpg', 'git', 'bash']);
  t.equal(decide(rules, req({ processes: chain })).action, 'allow', 'git is a parent');
  t.equal(decide(rules, req({ processes: ['gpg', 'bash'] })).action, 'confirm', 'no git');
  t.equal(decide(rules, req()).action, 'confirm', 'no process reported: the rule never matches');
  t.equal(decide(rules, req({ processes: ['GIT'] })).action, 'allow', 'case-insensitive glob');
  t.match(decide(rules, req({ processes: ['git'] })).rule, /process=git/);
  t.same(
    processNames({ command: '/opt/bin/git-remote-x --y' }),
    ['git-remote-x'],
    'the program a command line names',
  );
  const glob = rulesFrom(`
[[policy]]
process = "git*"
action = "allow"
`);
  t.equal(decide(glob, req({ processes: ['git-remote-http'] })).action, 'allow');
});
