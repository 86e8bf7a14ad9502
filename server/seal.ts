// The facade's end of the sealed channel: TLS 1.3 over the relayed stream, accepted only when the
// holder's certificate carries the very Ed25519 key the token names (`hpk`), and then the token's
// secret part as the first message, which only that holder can read. A self-signed certificate is
// expected, so the CA check is off; the pin below replaces it and runs before anything is sent.

import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import {
  SEAL_ACCEPTED,
  SEAL_HANDSHAKE_TIMEOUT_MS,
  SEAL_TLS_VERSION,
  certificateEd25519Key,
  describeSealError,
  encodeSealProof,
} from '../protocol/seal.js';

export class SealError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SealError';
  }
}

export interface SealOptions {
  /** The holder key the token pins (32 bytes). */
  hpk: Uint8Array;
  /** The token's secret part (32 bytes); not kept. */
  secret: Uint8Array;
  timeoutMs?: number;
  /** The reason the far end gave for closing, if the transport knows one (relay close reason). */
  closeReason?: () => string | undefined;
  /** Told `sealed channel: …` on any TLS failure, during or after the handshake, so the holder
   * can hear why; called before the stream is torn down. */
  onFailure?: (reason: string) => void;
}

/**
 * Runs the facade's side over RAW. Resolves with the TLS socket once the holder accepted the
 * proof; rejects with a SealError (one line) after destroying the stream otherwise.
 */
export function sealFacadeStream(raw: Duplex, opts: SealOptions): Promise<tls.TLSSocket> {
  const pinned = Buffer.from(opts.hpk);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      socket: raw,
      minVersion: SEAL_TLS_VERSION,
      maxVersion: SEAL_TLS_VERSION,
      // The holder's certificate is self-signed; it is checked against the pin on secureConnect.
      rejectUnauthorized: false,
      servername: '',
    });
    let done = false;
    const fail = (why: string) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.off('readable', onReadable);
      socket.destroy();
      raw.destroy();
      reject(new SealError(`sealed channel: ${why}`));
    };
    const timer = setTimeout(
      () => fail('the holder did not complete the handshake in time'),
      opts.timeoutMs ?? SEAL_HANDSHAKE_TIMEOUT_MS,
    );
    timer.unref();
    // First listener for the socket's life: later errors reach the tunnel as one clean line.
    socket.on('error', (e: Error) => {
      const why = describeSealError(e);
      opts.onFailure?.(`sealed channel: ${why}`);
      fail(why);
      e.message = `sealed channel: ${why}`;
    });
    socket.on('close', () => {
      const why = opts.closeReason?.();
      fail(why ? `the holder refused: ${why}` : 'the stream closed during the handshake');
    });
    let accepted = false;
    const onReadable = () => {
      if (!accepted || done) return;
      const b = socket.read(1) as Buffer | null;
      if (b === null) return;
      if (b[0] !== SEAL_ACCEPTED) return fail('the holder answered the proof with garbage');
      done = true;
      clearTimeout(timer);
      socket.off('readable', onReadable);
      resolve(socket);
    };
    socket.on('secureConnect', () => {
      if (socket.getProtocol() !== SEAL_TLS_VERSION) {
        return fail(`the holder negotiated ${socket.getProtocol() ?? 'no protocol'}`);
      }
      const cert = socket.getPeerCertificate(false);
      const key = cert?.raw ? certificateEd25519Key(cert.raw) : undefined;
      if (!key || !key.equals(pinned)) {
        return fail("the holder's key is not the one the token names (another holder answered)");
      }
      accepted = true;
      const proof = encodeSealProof(opts.secret);
      socket.write(proof, () => proof.fill(0));
      onReadable();
    });
    socket.on('readable', onReadable);
  });
}
