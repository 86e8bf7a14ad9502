// The environment `keytether connect -- CMD` hands to CMD. The command is the untrusted part of a
// CI job (a build, a test suite, a release script), and a token secret in its environment would
// be copied by anything that dumps or forwards the environment (debug output, crash reporters,
// child processes that outlive the job) and then used from anywhere until the token expires.
// CMD needs the agent socket, never the token.

/**
 * ENV plus git configuration (GIT_CONFIG_COUNT/KEY_n/VALUE_n, git ≥ 2.31) that makes git sign
 * through PROGRAM, leaving the user's own git config files alone; settings already passed this
 * way are kept, ours come after them.
 */
export function withGitSigning(env: NodeJS.ProcessEnv, program: string): NodeJS.ProcessEnv {
  const n = Number(env.GIT_CONFIG_COUNT ?? '0');
  const count = Number.isSafeInteger(n) && n >= 0 && n < 1000 ? n : 0;
  return {
    ...env,
    GIT_CONFIG_COUNT: String(count + 1),
    [`GIT_CONFIG_KEY_${count}`]: 'gpg.program',
    [`GIT_CONFIG_VALUE_${count}`]: program,
  };
}

/** Variables keytether reads for secrets: never passed on, whatever their value. */
const SECRET_VARIABLES = /^KEYTETHER_(?:.*_)?(?:TOKEN|SECRET|PASSPHRASE)(?:_.*)?$/;

/**
 * ENV without the token: the variables keytether takes secrets from, and any other variable whose
 * value carries the token's secret part (a CI system may hold it under another name too).
 */
export function commandEnvironment(env: NodeJS.ProcessEnv, token: string): NodeJS.ProcessEnv {
  const parts = token.trim().split('.');
  const secretPart = parts.length === 4 ? parts[3] : undefined;
  const out: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(env)) {
    if (value === undefined || SECRET_VARIABLES.test(name)) continue;
    if (secretPart && secretPart.length >= 16 && value.includes(secretPart)) continue;
    out[name] = value;
  }
  return out;
}
