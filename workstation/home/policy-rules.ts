// `[[policy]]` rules as config.toml and `--policy` spell them: their fields, schema and the
// PolicyRule the policy engine (workstation/policy) matches requests against.

import { z } from 'zod';
import { ConfigError, valueAt } from './config-error.js';
import { duration } from './duration.js';

export type Front = 'local' | 'ssh' | 'relay';
export type PolicyAction = 'allow' | 'confirm' | 'deny';

/** One `[[policy]]` rule; an absent matcher field matches anything. */
export interface PolicyRule {
  front?: Front | '*';
  /** Glob (`*`, `?`) over the remote host name, case-insensitive. */
  host?: string;
  /** Glob over the token id. */
  token?: string;
  /** Fingerprint, keygrip, 16-hex-digit long key id, or `*`. */
  key?: string;
  op?: 'sign' | 'decrypt' | 'ssh-sign' | '*';
  /**
   * For `ssh-sign` logins: where the server may log in with the key — a `SHA256:` host key
   * fingerprint, a host name the workstation's known_hosts records for the proven host key, or a
   * glob over its plain names.
   */
  destination?: string;
  /** true: only certify-capable keys; false: only keys that cannot certify. */
  certify?: boolean;
  /**
   * Glob over the program names of the requesting process and its parents (`git` matches a gpg
   * that git started). The server reports them, so only `allow` rules may have it: it can keep
   * such a rule from matching, never make a refusal or a confirmation go away.
   */
  process?: string;
  /** Absent only on rules that set `clear-sign` alone; those never decide the action. */
  action?: PolicyAction;
  /**
   * What a remote signature the holder cannot verify (blind) gets: `required` refuses it,
   * `preferred` and `off` let it through. Default: required for certify-capable keys. Decided by
   * the first matching rule that sets it, independently of the rule that decides the action.
   */
  clearSign?: 'required' | 'preferred' | 'off';
  /**
   * Whether plain `ssh-rsa` (SHA-1) SSH signatures may be made, for servers too old for
   * rsa-sha2 (OpenSSH < 7.2); the first matching rule with it decides, default no.
   */
  sshRsaSha1?: boolean;
  /** After one confirmation, allow the same front+host+token+key+op for this long. */
  rememberMs?: number;
  /** Where the rule came from, for the decision's human description. */
  origin?: string;
}

function normaliseKeySpec(s: string): string {
  return s.replace(/\s+/g, '').replace(/^0x/i, '').toUpperCase();
}

/** An SSH key's fingerprint as ssh-keygen -l prints it (case matters: it is base64). */
const SSH_FINGERPRINT_RE = /^SHA256:[A-Za-z0-9+/]{43}$/;

const keySpec = z
  .string()
  .max(100)
  .refine(
    (s) =>
      s === '*' ||
      SSH_FINGERPRINT_RE.test(s) ||
      /^([0-9A-F]{16}|[0-9A-F]{40}|[0-9A-F]{64})$/.test(normaliseKeySpec(s)),
    {
      message:
        'must be "*", a fingerprint, a keygrip, a 16-hex-digit key id or an SSH key\'s SHA256: fingerprint',
    },
  );

export const ruleSchema = z
  .strictObject({
    front: z.enum(['local', 'ssh', 'relay', '*']).optional(),
    host: z.string().min(1).max(255).optional(),
    token: z.string().min(1).max(128).optional(),
    key: keySpec.optional(),
    op: z.enum(['sign', 'decrypt', 'ssh-sign', '*']).optional(),
    destination: z
      .string()
      .min(1)
      .max(255)
      .regex(/^[^\s,]+$/, 'must be one host name, host:port, glob or SHA256: fingerprint')
      .optional(),
    certify: z.boolean().optional(),
    process: z
      .string()
      .min(1)
      .max(64)
      .regex(/^[^\s/]+$/, 'must be a program name or a glob over one, like "git"')
      .optional(),
    action: z.enum(['allow', 'confirm', 'deny']).optional(),
    'clear-sign': z.enum(['required', 'preferred', 'off']).optional(),
    'ssh-rsa-sha1': z.boolean().optional(),
    remember: duration.optional(),
  })
  .refine(
    (r) =>
      r.action !== undefined || r['clear-sign'] !== undefined || r['ssh-rsa-sha1'] !== undefined,
    {
      message:
        'a rule needs an action (allow, confirm, deny), a clear-sign or an ssh-rsa-sha1 setting',
      path: ['action'],
    },
  )
  // A faked process chain dodges any deny/confirm/clear-sign rule that depends on it, so such a
  // rule would look like protection and be none; on an allow rule it can only narrow.
  .refine(
    (r) =>
      r.process === undefined ||
      (r.action === 'allow' && r['clear-sign'] === undefined && r['ssh-rsa-sha1'] === undefined),
    {
      message:
        'only an "allow" rule without "clear-sign" or "ssh-rsa-sha1" may have "process": the server reports its processes and could lie to dodge a deny or confirm; put the allow rule with "process" before a deny or confirm rule without it',
      path: ['process'],
    },
  );

export const POLICY_RULE_KEYS: readonly string[] = Object.keys(ruleSchema.shape);

export type RuleInput = z.output<typeof ruleSchema>;

export function toRule(r: RuleInput, origin: string): PolicyRule {
  const rule: PolicyRule = { origin };
  if (r.action !== undefined) rule.action = r.action;
  if (r.front !== undefined) rule.front = r.front;
  if (r.host !== undefined) rule.host = r.host;
  if (r.token !== undefined) rule.token = r.token;
  if (r.key !== undefined) {
    rule.key = r.key === '*' || SSH_FINGERPRINT_RE.test(r.key) ? r.key : normaliseKeySpec(r.key);
  }
  if (r.op !== undefined) rule.op = r.op;
  if (r.destination !== undefined) rule.destination = r.destination;
  if (r.certify !== undefined) rule.certify = r.certify;
  if (r.process !== undefined) rule.process = r.process;
  if (r.remember !== undefined) rule.rememberMs = r.remember;
  if (r['clear-sign'] !== undefined) rule.clearSign = r['clear-sign'];
  if (r['ssh-rsa-sha1'] !== undefined) rule.sshRsaSha1 = r['ssh-rsa-sha1'];
  return rule;
}

/** `front=ssh,op=decrypt,action=confirm` → a rule, validated by the same schema as the file. */
export function parsePolicyFlag(text: string): PolicyRule {
  if (text.length > 1024) throw new ConfigError('--policy: the rule is too long', '--policy');
  const obj: Record<string, unknown> = {};
  for (const part of text.split(',')) {
    const m = /^\s*([a-z][a-z0-9-]*)\s*=\s*(.*?)\s*$/.exec(part);
    if (!m) {
      throw new ConfigError(
        `--policy: "${part.slice(0, 40)}" is not name=value; write e.g. --policy 'front=ssh,op=decrypt,action=confirm'`,
        '--policy',
      );
    }
    const [, name, value] = m as unknown as [string, string, string];
    obj[name] =
      name === 'certify' || name === 'ssh-rsa-sha1'
        ? value === 'true'
          ? true
          : value === 'false'
            ? false
            : value
        : value;
  }
  const r = ruleSchema.safeParse(obj);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const name = issue.code === 'unrecognized_keys' ? issue.keys[0] : issue.path.join('.');
    const why =
      issue.code === 'unrecognized_keys'
        ? 'unknown rule field'
        : valueAt(obj, issue.path) === undefined
          ? 'missing'
          : issue.message;
    throw new ConfigError(`--policy: "${name}": ${why}`, '--policy');
  }
  return toRule(r.data, `--policy ${text}`);
}
