// An ssh-agent signature as the holder makes it: the digest SSH's algorithm asks for (none for
// Ed25519, which signs the data itself), the destination named by the workstation's known_hosts,
// and the words the prompt and the audit record use. The front read the data's purpose; the
// holder only ever shows that reading, never the server's say-so about where it logs in.

import { createHash } from 'node:crypto';
import { ErrorCode, GpgError } from '../../protocol/gpg-error.js';
import type { KeyEntry, SshSignRequest } from '../../protocol/keyholder.js';
import type { AuditInput } from '../audit/audit.js';
import { sshSummary } from '../audit/operation-line.js';
import type { KeyOperator } from '../backends/backend.js';
import {
  describeDestination,
  resolveDestination,
  type Destination,
} from '../policy/destination.js';
import { askLines } from './prompt-text.js';

/**
 * Plain `ssh-rsa` signs SHA-1, whose chosen-prefix collisions are practical: OpenSSH stopped
 * accepting it in 8.8. Only servers older than rsa-sha2 (OpenSSH 7.2) ask for it.
 */
export const SHA1_REFUSAL =
  'a plain ssh-rsa (SHA-1) signature was asked for; only a server older than OpenSSH 7.2 asks for one, and a policy rule with ssh-rsa-sha1 = true for that host allows it';

/** SSH hash names → the SETHASH ids a KeyOperator signs digests with. */
const HASH_IDS = { sha1: 2, sha256: 8, sha384: 9, sha512: 10 } as const;

export interface PreparedSshSign {
  audit: Pick<AuditInput, 'ssh'>;
  destination?: Destination;
  act: (key: KeyOperator) => Uint8Array | Promise<Uint8Array>;
  prompt: (entry: KeyEntry) => string;
}

export async function prepareSshSign(
  req: SshSignRequest,
  knownHostsFiles: readonly string[],
): Promise<PreparedSshSign> {
  const destination =
    req.destination !== undefined
      ? await resolveDestination(req.destination, knownHostsFiles)
      : undefined;
  const ssh: NonNullable<AuditInput['ssh']> = {
    purpose: req.purpose,
    dataSha256: createHash('sha256').update(req.data).digest('hex'),
  };
  if (req.subject !== undefined) ssh.subject = req.subject;
  if (destination) {
    ssh.destination = destination.fingerprint;
    if (destination.names[0] !== undefined) ssh.destinationName = destination.names[0];
  }
  const data = Buffer.from(req.data);
  const act = (key: KeyOperator): Uint8Array | Promise<Uint8Array> => {
    if (key.signSsh) return key.signSsh(data, req.hash);
    if (req.hash !== undefined) {
      return key.sign(HASH_IDS[req.hash], createHash(req.hash).update(data).digest());
    }
    if (!key.signMessage) {
      throw new GpgError(ErrorCode.NOT_SUPPORTED, 'this key cannot make SSH signatures');
    }
    return key.signMessage(data);
  };
  const prompt = (entry: KeyEntry): string => {
    const lines = askLines(req.requester, 'make an SSH signature', entry);
    lines.push('', `It is a ${sshSummary(ssh)}.`);
    if (req.purpose === 'login') {
      lines.push(
        destination
          ? `The destination's host key is ${describeDestination(destination)}${destination.names.length === 0 ? ', which your known_hosts does not name' : ''}.`
          : 'The client did not prove where it logs in (no session-bind): it could be any host that accepts this key.',
      );
    }
    return lines.join('\n');
  };
  return { audit: { ssh }, ...(destination ? { destination } : {}), act, prompt };
}
