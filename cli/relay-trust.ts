// `--relay-ca FILE` and `--relay-fingerprint FPR`, shared by `keytether agent` and `keytether
// connect`: read and checked here, once, so a bad file or a mistyped pin is one clear sentence
// before anything connects.

import { X509Certificate } from 'node:crypto';
import { open } from 'node:fs/promises';
import { parseRelayFingerprint, type RelayTrust } from '../protocol/relay/endpoint.js';
import { UsageError, UserError } from '../system/user-error.js';

/** A CA bundle bigger than this is not a bundle (the Mozilla roots are ~220 KiB). */
const MAX_CA_BYTES = 1 << 20;
const MAX_CA_CERTS = 1000;

export const RELAY_CA_HELP =
  "trust a wss:// relay certificate issued by a CA in this PEM bundle, instead of the system's CAs";
export const RELAY_FINGERPRINT_HELP =
  "trust only the wss:// relay certificate with this SHA-256 fingerprint (sha256:HEX, hex with colons as 'openssl x509 -fingerprint -sha256' prints it, or base64); alone, it replaces the CA and host name checks";

/** Where a value came from, for messages: `--relay-ca` or `KEYTETHER_RELAY_CA`. */
export interface TrustSource {
  ca?: { value: string; name: string };
  fingerprint?: { value: string; name: string };
}

async function readBounded(file: string, name: string): Promise<string> {
  const fail = (why: string) =>
    new UserError(`cannot read ${name} ${file} (${why}); check the path and its permissions`);
  let fh;
  try {
    fh = await open(file, 'r');
  } catch (e) {
    throw fail((e as NodeJS.ErrnoException).code ?? 'unreadable');
  }
  try {
    const buf = Buffer.alloc(MAX_CA_BYTES + 1);
    let len = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, len, buf.length - len, null);
      if (bytesRead === 0) break;
      len += bytesRead;
      if (len > MAX_CA_BYTES) {
        throw new UserError(`${name} ${file} is larger than 1 MiB; it is not a CA bundle`);
      }
    }
    return buf.subarray(0, len).toString('utf8');
  } catch (e) {
    if (e instanceof UserError) throw e;
    throw fail((e as NodeJS.ErrnoException).code ?? 'unreadable');
  } finally {
    await fh.close();
  }
}

/** The PEM certificates in `text`, each parsed, or the sentence saying why it is no bundle. */
function caBundle(text: string, name: string, file: string): string {
  const blocks = text.match(
    /-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+?-----END CERTIFICATE-----/g,
  );
  if (!blocks || blocks.length === 0) {
    throw new UserError(
      `${name} ${file} holds no PEM certificate (-----BEGIN CERTIFICATE-----); pass the CA certificate in PEM form`,
    );
  }
  if (blocks.length > MAX_CA_CERTS) {
    throw new UserError(`${name} ${file} holds more than ${MAX_CA_CERTS} certificates`);
  }
  blocks.forEach((b, i) => {
    try {
      new X509Certificate(b);
    } catch {
      throw new UserError(`${name} ${file}: certificate ${i + 1} is not a valid X.509 certificate`);
    }
  });
  return blocks.join('\n') + '\n';
}

/** The trust settings for the relay clients, or undefined for the defaults (system CAs). */
export async function loadRelayTrust(src: TrustSource): Promise<RelayTrust | undefined> {
  const trust: RelayTrust = {};
  if (src.fingerprint !== undefined) {
    const fp = parseRelayFingerprint(src.fingerprint.value);
    if (!fp.ok) throw new UsageError(`${src.fingerprint.name} ${fp.error}`);
    trust.fingerprint = fp.sha256;
  }
  if (src.ca !== undefined) {
    const { value: file, name } = src.ca;
    trust.ca = caBundle(await readBounded(file, name), name, file);
  }
  return trust.ca !== undefined || trust.fingerprint !== undefined ? trust : undefined;
}
