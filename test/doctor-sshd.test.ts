// keytether doctor --server reads sshd's effective settings (sshd -T, as root) or, when it
// cannot, the global part of sshd_config, and says plainly when it can check neither. Each
// setting that stops classic forwarding, a jump host or keytether serve is named with its fix.

import t, { type Test } from 'tap';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { runCli } from './support/cli.js';
import { diagnoseSshd, parseSshdConfig } from '../server/sshd-check.js';

const lines = (out: string) => out.split('\n').map((l) => l.trim().replace(/\s+/, ' '));
const isRoot = process.getuid?.() === 0;

async function configFile(t: Test, text: string): Promise<string> {
  const dir = await mkdtemp('/tmp/ktdoc-sshd-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'sshd_config');
  // sshd -T needs a host key it can read; the machine's own serves.
  await writeFile(file, `HostKey /etc/ssh/ssh_host_ed25519_key\n${text}`);
  await chmod(file, 0o600);
  return file;
}

t.test(
  'sshd -T of a config that refuses socket and TCP forwarding, with a ForceCommand',
  { skip: !isRoot && 'sshd -T needs root' },
  async (t) => {
    const file = await configFile(
      t,
      'AllowStreamLocalForwarding no\nAllowTcpForwarding no\nForceCommand /bin/false\n',
    );
    const r = await runCli(['doctor', '--server', '--sshd-config', file]);
    const out = lines(r.stdout);
    t.ok(out.includes(`info sshd settings read from sshd -T -f ${file}`), r.stdout);
    t.ok(
      out.some(
        (l) =>
          l.startsWith('warn sshd has ForceCommand /bin/false, so keytether ssh cannot run') &&
          l.includes('exempt your account'),
      ),
    );
    t.ok(
      out.some(
        (l) =>
          l.startsWith(
            'info sshd refuses forwarded unix sockets (AllowStreamLocalForwarding no)',
          ) && l.endsWith('set AllowStreamLocalForwarding yes (or remote) in sshd_config'),
      ),
    );
    t.ok(out.some((l) => l.startsWith('info sshd refuses TCP forwarding (AllowTcpForwarding no)')));
  },
);

t.test(
  'sshd -T of a config set up for classic forwarding',
  { skip: !isRoot && 'sshd -T needs root' },
  async (t) => {
    const file = await configFile(t, 'StreamLocalBindUnlink yes\n');
    const r = await runCli(['doctor', '--server', '--sshd-config', file]);
    const out = lines(r.stdout);
    t.ok(
      out.includes('ok sshd accepts forwarded unix sockets (AllowStreamLocalForwarding yes)'),
      r.stdout,
    );
    t.ok(out.includes('ok sshd has StreamLocalBindUnlink yes'));
    t.ok(out.includes('ok sshd allows TCP forwarding (AllowTcpForwarding yes)'));
    t.notOk(out.some((l) => l.includes('ForceCommand')));

    // Without StreamLocalBindUnlink, a stale socket file breaks the next forward: said, with the fix.
    const plain = await configFile(t, '');
    const r2 = await runCli(['doctor', '--server', '--sshd-config', plain]);
    t.ok(
      lines(r2.stdout).some(
        (l) =>
          l.startsWith('info sshd has StreamLocalBindUnlink no') &&
          l.endsWith('add StreamLocalBindUnlink yes to sshd_config and reload sshd'),
      ),
      r2.stdout,
    );
  },
);

t.test(
  'without sshd -T: the global part of the file, and a plain word when that is unreadable',
  async (t) => {
    const file = await configFile(
      t,
      'Include /etc/ssh/sshd_config.d/*.conf\nallowtcpforwarding=local\nDisableForwarding no\nMatch User build\n  AllowStreamLocalForwarding no\n',
    );
    // An sshd that cannot run (as for a user who cannot read the host keys).
    const found = await diagnoseSshd({ config: file, sshd: '/nonexistent/sshd' });
    const text = found.map((f) => `${f.severity} ${f.text}`);
    t.ok(
      text.includes(
        `info sshd settings read from ${file}, outside Match blocks, Include not followed (sshd -T needs root)`,
      ),
      text.join('\n'),
    );
    t.ok(
      text.includes('ok sshd accepts forwarded unix sockets (AllowStreamLocalForwarding yes)'),
      'Match block not applied',
    );
    t.ok(text.includes('ok sshd allows TCP forwarding (AllowTcpForwarding local)'));

    const missing = await diagnoseSshd({
      config: path.join(path.dirname(file), 'absent'),
      sshd: '/nonexistent/sshd',
    });
    t.equal(missing.length, 1);
    t.equal(missing[0]?.severity, 'info');
    t.match(
      missing[0]?.text,
      /^cannot check sshd's forwarding settings: sshd -T failed \(.+\) and .+ is not readable \(ENOENT\)$/,
    );
    t.equal(missing[0]?.fix, 'run this as root (sudo keytether doctor --server) to check them');
  },
);

t.test('parseSshdConfig: first value wins, case and = are sshd’s, comments ignored', async (t) => {
  const { settings } = parseSshdConfig(
    '# AllowTcpForwarding no\nALLOWTCPFORWARDING No\nAllowTcpForwarding yes\nStreamLocalBindUnlink = "yes"\n',
  );
  t.same(settings, { allowtcpforwarding: 'no', streamlocalbindunlink: 'yes' });
});
