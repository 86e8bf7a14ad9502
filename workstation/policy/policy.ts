// Per-operation policy: parse, check constraints, then act (ssh-agent.c's order). The user's rules
// come first in file order; the built-in defaults below only decide what no rule matched.

import type { Requester } from '../../protocol/keyholder.js';
import type { ApprovalMemory, ApprovalScope } from './approvals.js';
import { destinationMatches, type Destination } from './destination.js';
import type { Front, PolicyAction, PolicyRule } from '../home/policy-rules.js';

export type { PolicyRule } from '../home/policy-rules.js';

export interface PolicyRequest {
  front: Front;
  host?: string;
  tokenId?: string;
  fingerprint: string;
  primaryFingerprint: string;
  keygrip: string;
  /** `ssh-sign`: an ssh-agent signature (a login, `ssh-keygen -Y sign`). */
  op: PolicyOp;
  certifyCapable: boolean;
  /** For `ssh-sign` logins: the destination the client proved with session-bind. */
  destination?: Destination;
  /**
   * Program names of the requesting process and of every parent (processNames), as the server
   * reports them; absent when it reported none.
   */
  processes?: string[];
}

/** `/usr/bin/git` → `git`, `-bash` (a login shell) → `bash`. */
function programOf(command: string | undefined): string | undefined {
  const argv0 = command?.split(' ')[0];
  if (!argv0) return undefined;
  const base = argv0.slice(argv0.lastIndexOf('/') + 1).replace(/^-/, '');
  return base || undefined;
}

/**
 * What a rule's `process` is matched against: each process's kernel name and the program its
 * command line names, the requesting process first. All of it is the server's claim.
 */
export function processNames(r: Pick<Requester, 'name' | 'command' | 'parents'>): string[] {
  const names: string[] = [];
  for (const p of [{ name: r.name, command: r.command }, ...(r.parents ?? [])]) {
    for (const n of [p.name, programOf(p.command)]) {
      if (n !== undefined && n.length > 0 && !names.includes(n)) names.push(n);
    }
  }
  return names;
}

export type PolicyOp = 'sign' | 'decrypt' | 'ssh-sign';

export type ClearSignSetting = NonNullable<PolicyRule['clearSign']>;

export interface Decision {
  action: PolicyAction;
  /**
   * Whether a remote signature must be one the holder saw (clear-signed): the deciding rule's
   * `clear-sign`, else `required` for certify-capable keys (a blind digest could certify an
   * attacker's user id or bind an attacker's subkey) and `preferred` for the others.
   */
  clearSign: ClearSignSetting;
  /** Whether a plain `ssh-rsa` (SHA-1) signature may be made: the first rule saying so. */
  sshRsaSha1: boolean;
  /** Human description of the matching rule, or `default` when no user rule matched. */
  rule: string;
  /** Set on `confirm` decisions whose rule has `remember`: grant that long after a yes. */
  rememberMs?: number;
  /** True when a `confirm` became `allow` because of a remembered approval. */
  remembered?: boolean;
}

/** `*` any run, `?` one character; case-insensitive. Iterative, so no pattern can backtrack badly. */
export function globMatch(pattern: string, text: string): boolean {
  const p = pattern.toLowerCase();
  const t = text.toLowerCase();
  let pi = 0;
  let ti = 0;
  let starP = -1;
  let starT = 0;
  while (ti < t.length) {
    if (pi < p.length && (p[pi] === '?' || p[pi] === t[ti])) {
      pi++;
      ti++;
    } else if (pi < p.length && p[pi] === '*') {
      starP = pi++;
      starT = ti;
    } else if (starP >= 0) {
      pi = starP + 1;
      ti = ++starT;
    } else {
      return false;
    }
  }
  while (pi < p.length && p[pi] === '*') pi++;
  return pi === p.length;
}

function norm(hex: string): string {
  return hex.replace(/\s+/g, '').replace(/^0x/i, '').toUpperCase();
}

/** Full fingerprint (of the subkey or its primary), keygrip, or long key id; case-insensitive. */
export function keyMatches(
  spec: string,
  key: { fingerprint: string; primaryFingerprint: string; keygrip: string },
): boolean {
  if (spec === '*') return true;
  // Keys of an ssh-agent back end are known by their SSH fingerprint (base64: case matters).
  if (spec.startsWith('SHA256:'))
    return spec === key.fingerprint || spec === key.primaryFingerprint;
  const s = norm(spec);
  const fprs = [norm(key.fingerprint), norm(key.primaryFingerprint)];
  if (s.length === 16) {
    // v4 key ids are the fingerprint's tail, v5/v6 ones its head.
    return fprs.some((f) => (f.length === 64 ? f.startsWith(s) : f.endsWith(s)));
  }
  return fprs.includes(s) || norm(key.keygrip) === s;
}

function optionalGlob(pattern: string | undefined, value: string | undefined): boolean {
  if (pattern === undefined || pattern === '*') return true;
  return value !== undefined && globMatch(pattern, value);
}

export function ruleMatches(rule: PolicyRule, req: PolicyRequest): boolean {
  if (rule.front !== undefined && rule.front !== '*' && rule.front !== req.front) return false;
  if (rule.op !== undefined && rule.op !== '*' && rule.op !== req.op) return false;
  if (rule.certify !== undefined && rule.certify !== req.certifyCapable) return false;
  if (!optionalGlob(rule.host, req.host)) return false;
  if (!optionalGlob(rule.token, req.tokenId)) return false;
  if (rule.key !== undefined && !keyMatches(rule.key, req)) return false;
  if (rule.destination !== undefined && !destinationMatches(rule.destination, req.destination)) {
    return false;
  }
  // Only ever narrows an allow rule (config.ts refuses it elsewhere): a server that lies about
  // its processes gets at most what the same rule without `process` would give it.
  if (rule.process !== undefined) {
    const pattern = rule.process;
    if (!(req.processes ?? []).some((name) => globMatch(pattern, name))) return false;
  }
  return true;
}

export function describeRule(rule: PolicyRule): string {
  const fields: string[] = [];
  for (const k of [
    'front',
    'host',
    'token',
    'key',
    'op',
    'destination',
    'certify',
    'process',
    'action',
    'clearSign',
    'sshRsaSha1',
  ] as const) {
    if (rule[k] !== undefined) fields.push(`${k}=${String(rule[k])}`);
  }
  if (rule.rememberMs !== undefined) fields.push(`remember=${Math.round(rule.rememberMs / 1000)}s`);
  const body = fields.join(' ');
  return rule.origin ? `${rule.origin}: ${body}` : body;
}

function defaultAction(req: PolicyRequest): PolicyAction {
  // Remote decryption hands a session key to a machine the user cannot see: ask. So does a
  // remote SSH signature: a login signature lets that machine in wherever the key is authorised
  // (the hijack `ssh -A` allows). Remote OpenPGP signing is allowed, with clear signing guarding
  // certify-capable keys.
  return req.front !== 'local' && req.op !== 'sign' ? 'confirm' : 'allow';
}

/** What a remembered approval for this request covers; pass it to ApprovalMemory.grant. */
export function approvalScope(req: PolicyRequest): ApprovalScope {
  const scope: ApprovalScope = { front: req.front, keygrip: req.keygrip, op: req.op };
  if (req.host !== undefined) scope.host = req.host;
  if (req.tokenId !== undefined) scope.tokenId = req.tokenId;
  // "Allow logins to github.com for 10 minutes" must not let the same key log in elsewhere.
  if (req.op === 'ssh-sign') scope.destination = req.destination?.fingerprint ?? '';
  return scope;
}

/**
 * The first matching rule with an action decides the action, the first with `clear-sign` the
 * clear-signing requirement; with `memory`, a `confirm` the user already approved within its
 * remember window becomes `allow`. Every trust decision of a request is made here.
 */
export function decide(
  rules: readonly PolicyRule[],
  req: PolicyRequest,
  memory?: ApprovalMemory,
  now?: number,
): Decision {
  const clearSign =
    rules.find((r) => r.clearSign !== undefined && ruleMatches(r, req))?.clearSign ??
    (req.certifyCapable ? 'required' : 'preferred');
  const sshRsaSha1 =
    rules.find((r) => r.sshRsaSha1 !== undefined && ruleMatches(r, req))?.sshRsaSha1 ?? false;
  const rule = rules.find((r) => r.action !== undefined && ruleMatches(r, req));
  const decision: Decision = rule
    ? { action: rule.action!, rule: describeRule(rule), clearSign, sshRsaSha1 }
    : { action: defaultAction(req), rule: 'default', clearSign, sshRsaSha1 };
  if (rule?.action === 'confirm' && rule.rememberMs !== undefined) {
    decision.rememberMs = rule.rememberMs;
  }
  if (decision.action === 'confirm' && memory?.isGranted(approvalScope(req), now)) {
    return { ...decision, action: 'allow', remembered: true };
  }
  return decision;
}
