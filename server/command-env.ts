// The environment `keytether connect -- CMD` hands to CMD. The command is the untrusted part of a
// CI job (a build, a test suite, a release script), and a token secret in its environment would
// be copied by anything that dumps or forwards the environment (debug output, crash reporters,
// child processes that outlive the job) and then used from anywhere until the token expires.
// CMD needs the agent socket, never the token.

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
