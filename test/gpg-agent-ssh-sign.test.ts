// SSH signatures with authentication subkeys held by the workstation's real gpg-agent (the keys
// gpg-agent's own sshcontrol would serve): through the holder and the ssh-agent front,
// ssh-keygen -Y sign verifies. Ed25519 signs the data whole, which gpg-agent 2.3+ takes with
// SETHASH --inquire; gpg-agent 2.2 cannot, and the refusal says so in one sentence.

import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { AuditLog } from '../workstation/audit/audit.js';
import { GpgAgentBackend } from '../workstation/backends/index.js';
import { Keystore } from '../workstation/keystore/index.js';
import { generateKey, makeGnupgHome } from './support/gnupg.js';
import { gpgClients } from './support/gpg-versions.js';
import { rigHolder, serveFront, sshsigSign, sshsigVerify } from './support/ssh-agent-rig.js';

const run = promisify(execFile);

for (const client of gpgClients().filter((c) => c.gpgconf)) {
  t.test(`${client.label} agent: ssh-keygen -Y sign with its auth subkeys`, async (t) => {
    const is22 = client.version.startsWith('2.2.');
    const ws = await makeGnupgHome({
      gpgBin: client.gpg,
      gpgConf: is22 ? [] : [`agent-program ${path.join(path.dirname(client.gpg), 'gpg-agent')}`],
    });
    t.teardown(() => ws.cleanup());
    await generateKey(ws, {
      uid: 'Dev <dev@example.org>',
      algo: 'ed25519',
      usage: 'sign',
      subkeys: [
        { algo: 'ed25519', usage: 'auth' },
        { algo: 'nistp256/ecdsa', usage: 'auth' },
      ],
    });
    const dir = await mkdtemp(path.join(tmpdir(), 'kt-gpga-ssh-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const backend = await GpgAgentBackend.open({
      gnupgHome: ws.home,
      gpg: client.gpg,
      gpgconf: client.gpgconf!,
    });
    t.teardown(() => backend.close());
    const audit = await AuditLog.open(path.join(dir, 'audit.jsonl'));
    t.teardown(() => audit.close());
    const holder = rigHolder({
      keystore: await Keystore.open(path.join(dir, 'keys')),
      backends: [backend],
      policy: [{ op: 'ssh-sign', action: 'allow' }],
      audit,
    });
    const front = await serveFront(holder, dir);
    t.teardown(() => front.close());
    const { env, events } = front;
    const listed = (await run('ssh-add', ['-L'], { env })).stdout.trim().split('\n');
    t.equal(listed.length, 2, 'both auth subkeys are offered');

    for (const [type, works] of [
      ['ecdsa-sha2-nistp256', true],
      ['ssh-ed25519', !is22],
    ] as const) {
      const pub = listed.find((l) => l.startsWith(`${type} `))!;
      const body = `tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\n\n${type}\n`;
      const signing = sshsigSign(env, dir, type, pub, body);
      if (!works) {
        await t.rejects(signing, `${type}: ssh-keygen fails`);
        t.ok(
          events.some((e) => /gpg-agent 2\.3 or later can/.test(e.detail)),
          'the refusal says which gpg-agent can',
        );
        const last = (await readFile(path.join(dir, 'audit.jsonl'), 'utf8')).trim().split('\n');
        t.match(JSON.parse(last.at(-1)!), { op: 'ssh-sign', decision: 'failed' });
        continue;
      }
      const [code, out] = await sshsigVerify(dir, pub, await signing, body);
      t.equal(code, 0, out);
      t.match(out, /Good "git" signature/, `${type} signed by gpg-agent verifies`);
    }
  });
}
