// What an ssh-agent is asked to sign, read so policy and prompts can name it: an SSH user
// authentication request (RFC 4252 §7, a login) or an SSHSIG blob (`ssh-keygen -Y sign`,
// namespace `git` for commit signing). Anything else is reported as unknown.

import { SshReader } from './wire.js';

export type SshSignPurpose =
  | { kind: 'login'; user: string; service: string; sessionId: Buffer; hostKey?: Buffer }
  | { kind: 'sshsig'; namespace: string }
  | { kind: 'unknown' };

const SSH_MSG_USERAUTH_REQUEST = 50;
const HOSTBOUND = 'publickey-hostbound-v00@openssh.com';

export function parseSignedData(data: Buffer): SshSignPurpose {
  if (data.subarray(0, 6).toString('latin1') === 'SSHSIG') {
    try {
      const r = new SshReader(data.subarray(6));
      const namespace = r.text();
      r.string(); // reserved
      const hash = r.text();
      r.string(); // the message's hash
      r.end();
      if (namespace.length > 0 && /^sha(256|512)$/.test(hash)) return { kind: 'sshsig', namespace };
    } catch {
      /* falls through to unknown */
    }
    return { kind: 'unknown' };
  }
  try {
    const r = new SshReader(data);
    const sessionId = r.string();
    if (r.byte() !== SSH_MSG_USERAUTH_REQUEST) return { kind: 'unknown' };
    const user = r.text();
    const service = r.text();
    const method = r.text();
    if (method !== 'publickey' && method !== HOSTBOUND) return { kind: 'unknown' };
    if (r.byte() !== 1) return { kind: 'unknown' };
    r.text(); // algorithm
    r.string(); // key blob
    // OpenSSH 8.9+ names the server's host key in the request itself (PROTOCOL §2.5).
    const hostKey = method === HOSTBOUND ? Buffer.from(r.string()) : undefined;
    r.end();
    const login = { kind: 'login', user, service, sessionId: Buffer.from(sessionId) } as const;
    return hostKey ? { ...login, hostKey } : login;
  } catch {
    return { kind: 'unknown' };
  }
}
