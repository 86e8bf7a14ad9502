// The same command lines, sent by the real gpg-connect-agent, to a real gpg-agent (2.2 and 2.4,
// in a throwaway GNUPGHOME) and to keytether's facade serving the same keys through a real
// tunnel: the answers must be the same lines, error codes and sources included. Then the stock
// gpg of that version, using the facade, must not print "server 'gpg-agent' is older than us".

import t from 'tap';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { compareVersions } from '../protocol/agent/index.js';
import { startFacade } from '../server/facade.js';
import { DEFAULT_CONFIG, type Config } from '../workstation/home/config.js';
import { openHolderRuntime } from '../workstation/holder/runtime.js';
import {
  clientHome,
  exportSecretKey,
  generateKey,
  makeGnupgHome,
  type TempGnupg,
} from './support/gnupg.js';
import { gpgClients, type GpgClient } from './support/gpg-versions.js';
import { ALLOW_BLIND_RULE } from './support/blind-signing.js';
import { tunnelTo } from './support/socket-pair.js';

const SOFTWARE = 'keytether/test';
const MISSING_GRIP = '0123456789ABCDEF0123456789ABCDEF01234567';

/** gpg 2.5's PKDECRYPT --kem=PGP ciphertext for an ECDH key (g10/pubkey-enc.c ecdh_sexp_build). */
function kemCiphertext(): Buffer {
  const raw = generateKeyPairSync('x25519')
    .publicKey.export({ format: 'der', type: 'spki' })
    .subarray(-32);
  const atom = (v: string | Buffer) => {
    const b = Buffer.isBuffer(v) ? v : Buffer.from(v, 'latin1');
    return Buffer.concat([Buffer.from(`${b.length}:`), b]);
  };
  const list = (...items: Buffer[]) =>
    Buffer.concat([Buffer.from('('), ...items, Buffer.from(')')]);
  const wrapped = Buffer.concat([Buffer.of(40), Buffer.alloc(40, 7)]);
  return list(
    atom('enc-val'),
    list(
      atom('ecc'),
      list(atom('c'), atom('9')),
      list(atom('h'), atom('8')),
      list(atom('e'), Buffer.concat([Buffer.of(0x40), raw])),
      list(atom('s'), wrapped),
      list(atom('kdf-params'), atom(Buffer.alloc(20, 1))),
    ),
  );
}

function agentProgram(client: GpgClient): string {
  return path.join(path.dirname(client.gpg), 'gpg-agent');
}

for (const client of gpgClients().filter((c) => c.gpgconf)) {
  t.test(`answers match gpg-agent ${client.version}`, async (t) => {
    const is22 = client.version.startsWith('2.2.');
    // No scdaemon program: the real agent then answers SCD the way it does on a machine
    // without one (what a server's gpg meets), whatever is installed here.
    const real = await makeGnupgHome({
      gpgBin: client.gpg,
      gpgConf: is22 ? [] : [`agent-program ${agentProgram(client)}`],
      agentConf: ['scdaemon-program /nonexistent/scdaemon'],
    });
    t.teardown(() => real.cleanup());
    const key = await generateKey(real, {
      uid: 'Cora Compat <cora@example.org>',
      algo: 'ed25519',
      usage: 'sign,cert',
      subkeys: [{ algo: 'cv25519', usage: 'encr' }],
    });
    const enc = key.subkeys[0]!.keygrip;

    const tmp = await mkdtemp('/tmp/ktcompat-');
    t.teardown(() => rm(tmp, { recursive: true, force: true }));
    const config: Config = { ...DEFAULT_CONFIG, relay: [], policy: [ALLOW_BLIND_RULE] };
    const rt = await openHolderRuntime(path.join(tmp, 'home'), { ...config, backend: 'builtin' });
    t.teardown(() => rt.close());
    await rt.keystore.importKeys(await exportSecretKey(real, key.fingerprint));

    const tunnel = await tunnelTo(t, rt.holder, tmp, SOFTWARE);
    await tunnel.ready;
    const facade = await startFacade({ socketPath: path.join(tmp, 'S.facade'), holder: tunnel });
    t.teardown(() => facade.close());

    const kem = path.join(tmp, 'kem.bin');
    await writeFile(kem, kemCiphertext());
    const commands = [
      `/definqfile CIPHERTEXT ${kem}`,
      `READKEY ${MISSING_GRIP}`,
      `READKEY --no-data ${MISSING_GRIP}`,
      'SCD SERIALNO',
      'SCD GETINFO version',
      'SCD',
      'GETINFO scd_running',
      `HAVEKEY ${MISSING_GRIP}`,
      `HAVEKEY ${enc}`,
      `KEYINFO ${MISSING_GRIP}`,
      `KEYINFO ${key.keygrip}`,
      `SETKEY --another ${enc}`,
      `SETKEY ${enc}`,
      'PKDECRYPT --kem=PGP',
      `SETKEY ${enc}`,
      'PKDECRYPT --kem=PQC-PGP',
      // 2.2 lists one name fewer; keytether reports a 2.4-or-newer version and lists 2.4's.
      ...(is22 ? [] : ['GETINFO std_env_names']),
    ];
    const ask = async (g: TempGnupg, args: string[]) => {
      const r = await g.run('gpg-connect-agent', [...args, ...commands, '/bye']);
      t.equal(r.code, 0, r.stderr);
      return r.stdout.toString('latin1').split('\n');
    };
    const fromAgent = await ask(real, ['--agent-program', agentProgram(client)]);
    const fromFacade = await ask(real, ['--no-autostart', '-S', facade.socketPath]);
    t.same(fromFacade, fromAgent, 'line for line what gpg-agent answers');
    // The commands the review found answered differently, spelled out.
    t.ok(fromAgent.includes('ERR 67141713 No such file or directory <GPG Agent>'), 'READKEY');
    t.ok(fromAgent.includes('ERR 67108983 No SmartCard daemon <GPG Agent>'), 'SCD');
    t.ok(fromAgent.includes('ERR 67108943 Invalid data <GPG Agent>'), 'PKDECRYPT --kem');

    // The version: never older than this agent or the gpg beside it.
    const v = await real.run('gpg-connect-agent', [
      '--no-autostart',
      '-S',
      facade.socketPath,
      'GETINFO version',
      '/bye',
    ]);
    const reported = /^D (\S+)$/m.exec(v.stdout.toString())?.[1] ?? '';
    t.ok(compareVersions(reported, client.version) >= 0, `${reported} >= ${client.version}`);

    // And this gpg, meeting the facade, does not call it older than itself.
    const pub = await real.gpg(['--batch', '--export', key.fingerprint]);
    const server = await clientHome(facade.socketPath, pub.stdout, client.gpg);
    t.teardown(() => server.cleanup());
    const list = await server.gpg(['--batch', '--status-fd', '1', '-K']);
    t.equal(list.code, 0, list.stderr);
    t.notMatch(list.stderr, /older than us/, 'no warning on stderr');
    t.notMatch(list.stdout.toString(), /server_version_mismatch/, 'no warning on the status fd');
    t.match(list.stdout.toString(), /^sec /m, 'the key is listed as usable');
  });
}
