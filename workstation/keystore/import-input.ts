// Turning what a user pipes into `keytether keys import` into OpenPGP key objects, with one plain
// sentence for every way that input can be wrong.

import * as openpgp from 'openpgp';
import { UserError } from '../../system/user-error.js';

/** More than any real keyring export; stops a wrong file (a disk image…) from being parsed. */
export const MAX_IMPORT_BYTES = 16 * 1024 * 1024;
const MAX_KEYS = 1000;

const ARMOR_BLOCK =
  /-----BEGIN PGP (PRIVATE|PUBLIC) KEY BLOCK-----[\s\S]*?-----END PGP \1 KEY BLOCK-----/g;

// openpgp.js reads version 5 key packets (LibrePGP, what gpg 2.4 makes for Ed448 and X448) only
// for the curves it knows, and Ed448 as legacy EdDSA and X448 as ECDH are not among them: it drops
// those packets, then says only "No key packet found" or imports the rest without them. This probe
// reuses openpgp's packet framing to read the first bytes of each key packet, so that the refusal
// can say what the file holds.
const KEY_PACKET_TAGS = [5, 6, 7, 14] as const;
const OID_NAMES: Record<string, string> = { '2b6571': 'Ed448', '2b656f': 'X448' };
const ALGO_NAMES: Record<number, string> = { 26: 'X448', 28: 'Ed448' };

interface KeyPacketHead {
  version: number;
  name: string;
}

function probeClass(tag: number) {
  return class KeyVersionProbe {
    static readonly tag = tag;
    head: KeyPacketHead | undefined;
    read(bytes: Uint8Array): void {
      // Version 5: version, 4-byte creation time, algorithm, 4-byte key material length, then for
      // ECC algorithms the curve OID with its length byte.
      const algo = bytes[5] ?? 0;
      const oidLength = bytes[10] ?? 0;
      const oid = Buffer.from(bytes.subarray(11, 11 + oidLength)).toString('hex');
      this.head = {
        version: bytes[0] ?? 0,
        name: ALGO_NAMES[algo] ?? OID_NAMES[oid] ?? `algorithm ${algo}`,
      };
    }
  };
}

function skipClass(tag: number) {
  return class UnreadPacket {
    static readonly tag = tag;
    read(): void {}
  };
}

/** The algorithms of the version 5 key packets in BYTES (binary or armored), in order. */
async function versionFiveKeys(bytes: Uint8Array): Promise<string[]> {
  const names: string[] = [];
  const binaries: Uint8Array[] = [];
  if (looksArmored(bytes)) {
    for (const block of Buffer.from(bytes).toString('utf8').match(ARMOR_BLOCK) ?? []) {
      binaries.push((await openpgp.unarmor(block)).data as Uint8Array);
    }
  } else {
    binaries.push(bytes);
  }
  // At run time openpgp indexes this by tag as a plain object, whatever its typings say.
  // Every other packet (user IDs, signatures…) is taken and left unread, since openpgp throws on a
  // packet type it was not told to expect.
  const allowed = Object.fromEntries(
    Array.from({ length: 63 }, (_, i) => i + 1).map((tag) => [
      tag,
      (KEY_PACKET_TAGS as readonly number[]).includes(tag) ? probeClass(tag) : skipClass(tag),
    ]),
  );
  const config = {
    ...openpgp.config,
    ignoreUnsupportedPackets: true,
    ignoreMalformedPackets: true,
  };
  for (const binary of binaries) {
    const packets = await openpgp.PacketList.fromBinary(
      binary,
      allowed as unknown as Parameters<typeof openpgp.PacketList.fromBinary>[1],
      config,
    );
    for (const p of packets as unknown as { head?: KeyPacketHead }[]) {
      if (p.head?.version === 5 && !names.includes(p.head.name)) names.push(p.head.name);
    }
  }
  return names;
}

async function refuseVersionFive(bytes: Uint8Array, source: string): Promise<void> {
  const names = await versionFiveKeys(bytes).catch(() => []);
  if (names.length === 0) return;
  throw new UserError(
    `${source} holds ${names.join(' and ')} keys in gpg 2.4's version 5 format, which the builtin store cannot read; keep them in your GnuPG home and run keytether with --backend gpg-agent`,
  );
}

function looksArmored(bytes: Uint8Array): boolean {
  const head = Buffer.from(bytes.subarray(0, 512)).toString('latin1').trimStart();
  return head.startsWith('-----BEGIN PGP');
}

export async function readKeyInput(bytes: Uint8Array, source: string): Promise<openpgp.Key[]> {
  if (bytes.length === 0)
    throw new UserError(`${source} is empty; pipe in the output of gpg --export-secret-keys`);
  if (bytes.length > MAX_IMPORT_BYTES) {
    throw new UserError(
      `${source} is larger than ${MAX_IMPORT_BYTES} bytes; that is not a key export`,
    );
  }
  // Before openpgp's own parse: in a file that also holds older keys, it would skip these silently.
  await refuseVersionFive(bytes, source);
  const keys: openpgp.Key[] = [];
  try {
    if (looksArmored(bytes)) {
      const text = Buffer.from(bytes).toString('utf8');
      const blocks = text.match(ARMOR_BLOCK) ?? [];
      if (blocks.length === 0) {
        throw new UserError(
          `${source} is ASCII-armored but holds no PGP key block; export with gpg --export-secret-keys --armor`,
        );
      }
      for (const armoredKeys of blocks) keys.push(...(await openpgp.readKeys({ armoredKeys })));
    } else {
      keys.push(...(await openpgp.readKeys({ binaryKeys: bytes })));
    }
  } catch (e) {
    if (e instanceof UserError) throw e;
    // openpgp's messages describe the format problem only; they never echo key material.
    const why = e instanceof Error ? e.message.replace(/\s+/g, ' ').slice(0, 160) : 'unreadable';
    throw new UserError(
      `${source} is not a readable OpenPGP key export (${why}); export with gpg --export-secret-keys`,
    );
  }
  if (keys.length === 0) {
    throw new UserError(`${source} holds no OpenPGP keys; export with gpg --export-secret-keys`);
  }
  if (keys.length > MAX_KEYS) throw new UserError(`${source} holds more than ${MAX_KEYS} keys`);
  const publicOnly = keys.filter((k) => !k.isPrivate());
  if (publicOnly.length === keys.length) {
    throw new UserError(`${source} holds only public keys; export with gpg --export-secret-keys`);
  }
  if (publicOnly.length > 0) {
    const fpr = publicOnly[0]!.getFingerprint().toUpperCase();
    throw new UserError(
      `${source} holds key ${fpr} without its secret part; export it with gpg --export-secret-keys ${fpr}`,
    );
  }
  return keys;
}
