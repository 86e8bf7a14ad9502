// The ssh-agent front: a second front over the same KeyHolder as the gpg-agent one
// (protocol/agent). It lists the holder's authentication keys, forwards signatures to
// KeyHolder.sshSign with what the data says it is for, and refuses every request that would
// change the agent's keys (a remote front must never add, remove or lock them).

import { createHash, createPublicKey, verify } from 'node:crypto';
import type { Duplex } from 'node:stream';
import type { KeyHolder, Requester, SshSignRequest } from '../keyholder.js';
import { rsaModulusBytes, sshPublicKey, sshSignature, type SshPublicKey } from './keys.js';
import { parseSignedData } from './signed-data.js';
import {
  frame,
  MessageReader,
  MSG,
  SIGN_FLAGS,
  SshReader,
  sshString,
  sshUint32,
  WireError,
} from './wire.js';

export { MAX_MESSAGE_BYTES } from './wire.js';
export { parseSignedData } from './signed-data.js';
export { sshPublicKey } from './keys.js';

export interface SshAgentEvent {
  kind: 'refused' | 'malformed' | 'signed' | 'bound';
  detail: string;
}

export interface SshAgentOptions {
  holder: KeyHolder;
  requester: Requester | (() => Promise<Requester>);
  onEvent?: (e: SshAgentEvent) => void;
}

interface Identity {
  keygrip: string;
  key: SshPublicKey;
  modulusBytes: number;
  comment: string;
}

/** The `SHA256:` fingerprint OpenSSH prints for a key blob. */
export function sshFingerprint(blob: Uint8Array): string {
  return 'SHA256:' + createHash('sha256').update(blob).digest('base64').replace(/=+$/, '');
}

const FAILURE = frame(MSG.FAILURE);
const REFUSED = new Set<number>([
  MSG.ADD_IDENTITY,
  MSG.REMOVE_IDENTITY,
  MSG.REMOVE_ALL_IDENTITIES,
  MSG.ADD_SMARTCARD_KEY,
  MSG.REMOVE_SMARTCARD_KEY,
  MSG.LOCK,
  MSG.UNLOCK,
  MSG.ADD_ID_CONSTRAINED,
  MSG.ADD_SMARTCARD_KEY_CONSTRAINED,
]);

/** Serves one ssh-agent connection until the peer closes it. Requests are answered in order. */
export function serveSshAgent(stream: Duplex, opts: SshAgentOptions): Promise<void> {
  const reader = new MessageReader();
  /** session-bind@openssh.com: session id → the destination's host key fingerprint. */
  const bound = new Map<string, string>();
  let queue = Promise.resolve();
  const event = (kind: SshAgentEvent['kind'], detail: string): void =>
    opts.onEvent?.({ kind, detail });

  const identities = async (): Promise<Identity[]> => {
    const inv = await opts.holder.inventory();
    return inv.keys.flatMap((k): Identity[] => {
      if (!k.usage.includes('auth')) return [];
      const key = sshPublicKey(k.publicKey);
      if (!key) return [];
      return [
        {
          keygrip: k.keygrip,
          key,
          modulusBytes: rsaModulusBytes(k.publicKey),
          comment: k.comment || k.fingerprint,
        },
      ];
    });
  };

  const requester = async (): Promise<Requester> =>
    typeof opts.requester === 'function' ? opts.requester() : opts.requester;

  const sign = async (r: SshReader): Promise<Buffer> => {
    const blob = r.string();
    const data = r.string();
    const flags = r.uint32();
    r.end();
    const id = (await identities()).find((i) => i.key.blob.equals(blob));
    if (!id) {
      event('refused', 'sign request for a key the holder does not offer');
      return FAILURE;
    }
    if (!opts.holder.sshSign) {
      event('refused', 'this holder cannot make ssh signatures');
      return FAILURE;
    }
    let rsaAlgo: 'rsa-sha2-256' | 'rsa-sha2-512' | 'ssh-rsa' = 'ssh-rsa';
    let hash = id.key.hash;
    if (id.key.type === 'ssh-rsa') {
      if (flags & SIGN_FLAGS.RSA_SHA2_512) [rsaAlgo, hash] = ['rsa-sha2-512', 'sha512'];
      else if (flags & SIGN_FLAGS.RSA_SHA2_256) [rsaAlgo, hash] = ['rsa-sha2-256', 'sha256'];
      // Plain ssh-rsa: the holder's policy decides (refused unless a rule allows SHA-1).
      else hash = 'sha1';
    }
    const purpose = parseSignedData(data);
    const req: SshSignRequest = {
      keygrip: id.keygrip,
      data,
      purpose: purpose.kind,
      requester: await requester(),
    };
    if (hash) req.hash = hash;
    if (purpose.kind === 'login') {
      req.subject = purpose.user;
      // Only a destination the client proved with session-bind counts; a hostbound request
      // naming another host key than the bound one is refused outright.
      const dest = bound.get(purpose.sessionId.toString('hex'));
      if (dest && purpose.hostKey && sshFingerprint(purpose.hostKey) !== dest) {
        event('refused', 'login request names another host than the bound session');
        return FAILURE;
      }
      if (dest) req.destination = dest;
    } else if (purpose.kind === 'sshsig') req.subject = purpose.namespace;
    try {
      const sigVal = await opts.holder.sshSign(req);
      event('signed', `${purpose.kind} ${req.subject ?? ''}`.trim());
      return frame(
        MSG.SIGN_RESPONSE,
        sshString(sshSignature(id.key, rsaAlgo, id.modulusBytes, sigVal)),
      );
    } catch (err) {
      event('refused', err instanceof Error ? err.message : 'signature refused');
      return FAILURE;
    }
  };

  const extension = (r: SshReader): Buffer => {
    const name = r.text();
    if (name === 'query') {
      r.end();
      return frame(MSG.SUCCESS, sshString('query'), sshString('session-bind@openssh.com'));
    }
    if (name === 'session-bind@openssh.com') {
      const hostKey = r.string();
      const sessionId = r.string();
      const signature = r.string();
      const forwarding = r.byte();
      r.end();
      if (!verifyHostSignature(hostKey, sessionId, signature)) {
        event('refused', 'session-bind with a host key signature that does not verify');
        return FAILURE;
      }
      const fp = sshFingerprint(hostKey);
      bound.set(sessionId.toString('hex'), fp);
      event('bound', `${fp}${forwarding ? ' (forwarded)' : ''}`);
      return frame(MSG.SUCCESS);
    }
    // draft-miller-ssh-agent §4.7: an unknown extension is a plain FAILURE.
    return FAILURE;
  };

  const handle = async (type: number, body: Buffer): Promise<Buffer> => {
    const r = new SshReader(body);
    try {
      if (type === MSG.REQUEST_IDENTITIES) {
        r.end();
        const ids = await identities();
        return frame(
          MSG.IDENTITIES_ANSWER,
          sshUint32(ids.length),
          ...ids.flatMap((i) => [sshString(i.key.blob), sshString(i.comment)]),
        );
      }
      if (type === MSG.SIGN_REQUEST) return await sign(r);
      if (type === MSG.EXTENSION) return extension(r);
      if (REFUSED.has(type)) event('refused', `message ${type} changes the agent's keys`);
      else event('malformed', `unknown message type ${type}`);
      return FAILURE;
    } catch (err) {
      if (err instanceof WireError) event('malformed', err.message);
      else event('refused', err instanceof Error ? err.message : 'request failed');
      return FAILURE;
    }
  };

  return new Promise((resolve) => {
    const finish = (): void => resolve();
    stream.on('data', (chunk: Buffer) => {
      for (const m of reader.push(chunk)) {
        if (m.kind === 'oversize') {
          event('malformed', 'message over the size limit');
          stream.end(FAILURE);
          return;
        }
        queue = queue.then(async () => {
          const reply = await handle(m.type, m.body);
          if (!stream.destroyed) stream.write(reply);
        });
      }
    });
    stream.on('error', finish);
    stream.on('close', finish);
    stream.on('end', () => {
      void queue.then(() => stream.end());
    });
  });
}

/** The server's signature over the session id, with the host key it offered (RFC 4253 §8). */
function verifyHostSignature(hostKey: Buffer, sessionId: Buffer, signature: Buffer): boolean {
  try {
    const k = new SshReader(hostKey);
    const keyType = k.text();
    const s = new SshReader(signature);
    const sigType = s.text();
    const sig = s.string();
    s.end();
    if (keyType === 'ssh-ed25519' && sigType === 'ssh-ed25519') {
      const pub = k.string();
      k.end();
      if (pub.length !== 32) return false;
      const key = createPublicKey({
        format: 'jwk',
        key: { kty: 'OKP', crv: 'Ed25519', x: pub.toString('base64url') },
      });
      return verify(null, sessionId, key, sig);
    }
    if (keyType.startsWith('ecdsa-sha2-nistp') && sigType === keyType) {
      const curveId = k.text();
      const q = k.string();
      k.end();
      const curve = {
        nistp256: ['P-256', 'sha256', 32],
        nistp384: ['P-384', 'sha384', 48],
        nistp521: ['P-521', 'sha512', 66],
      }[curveId];
      if (!curve || q[0] !== 4) return false;
      const [crv, hash, size] = curve as [string, string, number];
      const x = q.subarray(1, 1 + size);
      const y = q.subarray(1 + size);
      if (y.length !== size) return false;
      const key = createPublicKey({
        format: 'jwk',
        key: { kty: 'EC', crv, x: x.toString('base64url'), y: y.toString('base64url') },
      });
      const rs = new SshReader(sig);
      const r = rs.string();
      const sv = rs.string();
      rs.end();
      const fixed = (v: Buffer): Buffer => {
        const t = v.subarray(
          v.findIndex((b) => b !== 0) < 0 ? v.length : v.findIndex((b) => b !== 0),
        );
        return Buffer.concat([Buffer.alloc(Math.max(0, size - t.length)), t]);
      };
      return verify(
        hash,
        sessionId,
        { key, dsaEncoding: 'ieee-p1363' },
        Buffer.concat([fixed(r), fixed(sv)]),
      );
    }
    if (keyType === 'ssh-rsa' && (sigType === 'rsa-sha2-256' || sigType === 'rsa-sha2-512')) {
      const e = k.string();
      const n = k.string();
      k.end();
      const key = createPublicKey({
        format: 'jwk',
        key: {
          kty: 'RSA',
          n: stripZero(n).toString('base64url'),
          e: stripZero(e).toString('base64url'),
        },
      });
      return verify(sigType === 'rsa-sha2-256' ? 'sha256' : 'sha512', sessionId, key, sig);
    }
    return false;
  } catch {
    return false;
  }
}

function stripZero(v: Buffer): Buffer {
  let i = 0;
  while (i < v.length - 1 && v[i] === 0) i++;
  return v.subarray(i);
}
