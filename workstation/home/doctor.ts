// `keytether doctor`: the holder's side of a set-up, checked without changing anything — the
// home's permissions, config.toml, the keys, the pinentry, the running agent, the audit chain,
// and whether each configured relay answers with a certificate this machine trusts.

import { existsSync } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';
import type { Finding } from '../../system/diagnosis.js';
import { verifyAuditLog } from '../audit/audit.js';
import { requestStatus } from '../control/control.js';
import { ConfigError, loadConfig, type Config } from './config.js';

const RELAY_TIMEOUT_MS = 5000;

function onPath(program: string, env: NodeJS.ProcessEnv): boolean {
  if (program.includes('/')) return existsSync(program);
  return (env.PATH ?? '').split(':').some((d) => d !== '' && existsSync(path.join(d, program)));
}

/** Files and directories under HOME that others can read or write, at most a few levels down. */
async function exposed(dir: string, depth = 2): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = path.join(dir, e.name);
    const st = await lstat(p).catch(() => undefined);
    if (!st || st.isSymbolicLink() || st.isSocket()) continue;
    if ((st.mode & 0o077) !== 0) out.push(p);
    if (st.isDirectory() && depth > 0) out.push(...(await exposed(p, depth - 1)));
  }
  return out;
}

async function relayFinding(url: string): Promise<Finding> {
  const health = new URL('healthz', url.endsWith('/') ? url : `${url}/`);
  try {
    const r = await fetch(health, { signal: AbortSignal.timeout(RELAY_TIMEOUT_MS) });
    return r.ok
      ? { severity: 'ok', text: `relay ${url} answers` }
      : { severity: 'fail', text: `relay ${url} answers ${r.status} on /healthz` };
  } catch (e) {
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    const code = cause?.code ?? cause?.message ?? (e as Error).name;
    if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS/.test(code ?? '')) {
      return {
        severity: 'fail',
        text: `relay ${url}: its TLS certificate is not trusted here (${code})`,
        fix: 'give keytether agent --relay-ca FILE or --relay-fingerprint sha256:… (deploy/README.md)',
      };
    }
    return {
      severity: 'fail',
      text: `relay ${url} does not answer (${code === 'TimeoutError' ? `no answer in ${RELAY_TIMEOUT_MS / 1000} s` : code})`,
      fix: 'check the URL and that keytether relay runs there',
    };
  }
}

export async function diagnoseWorkstation(
  home: string,
  opts: { configFile?: string; version?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<Finding[]> {
  const env = opts.env ?? process.env;
  const out: Finding[] = [];
  const st = await lstat(home).catch(() => undefined);
  if (!st) {
    out.push({
      severity: 'info',
      text: `no keytether home at ${home} yet`,
      fix: "'keytether keys import' creates it (or set KEYTETHER_HOME)",
    });
    return out;
  }
  const uid = process.getuid?.();
  if (!st.isDirectory()) {
    out.push({ severity: 'fail', text: `${home} is not a directory`, fix: 'move it away' });
    return out;
  }
  if (uid !== undefined && st.uid !== uid) {
    out.push({
      severity: 'fail',
      text: `${home} is owned by uid ${st.uid}, not by you (uid ${uid})`,
      fix: 'use a directory of your own (KEYTETHER_HOME)',
    });
  } else if ((st.mode & 0o077) !== 0) {
    out.push({
      severity: 'fail',
      text: `${home} is open to other users (mode ${(st.mode & 0o777).toString(8)})`,
      fix: `chmod 700 ${home}`,
    });
  } else {
    out.push({ severity: 'ok', text: `home ${home} is private to you` });
  }
  for (const p of await exposed(home)) {
    out.push({
      severity: 'fail',
      text: `${p} is readable or writable by other users`,
      fix: `chmod go= ${p}`,
    });
  }

  let config: Config | undefined;
  try {
    config = await loadConfig(home, opts.configFile);
    out.push({
      severity: 'ok',
      text: config.file
        ? `${config.file}: ${config.policy.length} policy rule(s), ${config.relay.length} relay(s)`
        : 'no config.toml: the defaults apply',
    });
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    out.push({ severity: 'fail', text: e.message });
    for (const p of e.problems) out.push({ severity: 'fail', text: p });
  }

  const keyFiles = (await readdir(path.join(home, 'keys')).catch(() => [] as string[])).filter(
    // <FPR>.v5: gpg 2.4's Ed448/X448 keys, stored as exported.
    (n) => n.endsWith('.key') || n.endsWith('.v5'),
  );
  const backend = config?.backend ?? 'auto';
  out.push(
    keyFiles.length > 0
      ? { severity: 'ok', text: `${keyFiles.length} key(s) in keytether's keystore` }
      : {
          severity: backend === 'builtin' ? 'warn' : 'info',
          text:
            backend === 'builtin'
              ? "no keys in keytether's keystore, and the back end is builtin"
              : "no keys in keytether's keystore (the gpg-agent back end serves GnuPG's, if your GnuPG home has any)",
          ...(backend === 'builtin'
            ? { fix: 'import one: gpg --export-secret-keys KEY | keytether keys import' }
            : {}),
        },
  );

  const pinentry = config?.pinentryProgram ?? 'pinentry';
  out.push(
    onPath(pinentry, env)
      ? { severity: 'ok', text: `pinentry: ${pinentry}` }
      : {
          severity: 'warn',
          text: `no pinentry (${pinentry}) found, so passphrases and confirmations cannot be asked and such requests fail`,
          fix: 'install one (apt-get install pinentry-gnome3 or pinentry-curses) or set pinentry-program',
        },
  );

  const status = await requestStatus(home, {
    timeoutMs: 3000,
    ...(opts.version !== undefined ? { version: opts.version } : {}),
  }).catch((e: unknown) => (e instanceof Error ? e : new Error(String(e))));
  if (status instanceof Error) {
    out.push({ severity: 'warn', text: `the agent's control socket: ${status.message}` });
  } else if (status) {
    out.push({
      severity: 'ok',
      text: `keytether agent pid ${status.pid} runs, since ${status.startedAt}`,
    });
  } else {
    out.push({
      severity: 'info',
      text: 'no keytether agent runs for this home',
      fix: "start one: 'keytether agent', or systemctl --user start keytether-agent.socket",
    });
  }

  const auditFile = path.join(home, 'audit.jsonl');
  if (existsSync(auditFile)) {
    const v = await verifyAuditLog(auditFile);
    out.push(
      v.ok
        ? { severity: 'ok', text: `audit log: ${v.records} record(s), the chain verifies` }
        : {
            severity: 'fail',
            text: `audit log fails verification at record ${v.record}: ${v.reason}`,
            fix: 'keep the file as evidence; keytether audit verify shows the same',
          },
    );
  }

  for (const url of config?.relay ?? []) out.push(await relayFinding(url));
  return out;
}
