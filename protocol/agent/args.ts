// Argument parsing for gpg-agent commands, with the same error answers the real agent gives
// (checked against gpg-agent 2.2.40 with gpg-connect-agent), because gpg-connect-agent users and
// the interop tests compare these lines verbatim.

import { ErrorCode, GpgError } from '../gpg-error.js';

/** A command line split into leading `--options` and the positional words after them. */
export interface ParsedArgs {
  options: Map<string, string | undefined>;
  words: string[];
}

/**
 * Splits on blanks; leading words starting with `--` are options (`--name` or `--name=value`),
 * like the agent's skip_options(). A bare `--` ends the options.
 */
export function parseArgs(args: string): ParsedArgs {
  const tokens = args.split(/[ \t]+/).filter((t) => t.length > 0);
  const options = new Map<string, string | undefined>();
  let i = 0;
  for (; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (!t.startsWith('--')) break;
    if (t === '--') {
      i++;
      break;
    }
    const eq = t.indexOf('=');
    if (eq < 0) options.set(t.slice(2), undefined);
    else options.set(t.slice(2, eq), t.slice(eq + 1));
  }
  return { options, words: tokens.slice(i) };
}

export function paramError(detail: string): GpgError {
  return new GpgError(ErrorCode.ASS_PARAMETER, detail);
}

const HEX = /^[0-9A-Fa-f]*$/;

/** Hex digits → bytes; the checks and their order follow the agent's parse_hexstring(). */
export function parseHexString(word: string | undefined): Buffer {
  const text = word ?? '';
  if (!HEX.test(text)) throw paramError('invalid hexstring');
  if (text.length % 2 !== 0) throw paramError('odd number of digits');
  return Buffer.from(text, 'hex');
}

/** A 40-digit keygrip, returned in gpg's uppercase spelling. */
export function parseKeygrip(word: string | undefined): string {
  const bytes = parseHexString(word);
  if (bytes.length !== 20) throw paramError('invalid length of keygrip');
  return bytes.toString('hex').toUpperCase();
}

/** libgcrypt digest ids gpg sends in `SETHASH <algo> <hex>`, with their `--hash=` names. */
export const HASH_ALGOS: Readonly<Record<string, number>> = {
  md5: 1,
  sha1: 2,
  rmd160: 3,
  sha256: 8,
  sha384: 9,
  sha512: 10,
  sha224: 11,
};
const KNOWN_ALGO_IDS = new Set(Object.values(HASH_ALGOS));

/** Digest lengths the agent accepts regardless of algorithm (agent/command.c cmd_sethash). */
const DIGEST_LENGTHS = new Set([16, 20, 24, 28, 32, 48, 64]);

export interface HashSetting {
  algo: number;
  digest: Buffer;
}

export function parseSetHash(args: string): HashSetting {
  const { options, words } = parseArgs(args);
  // Raw to-be-signed data (gpgsm's PureEdDSA / PSS path) would need a different holder request;
  // gpg itself never uses these forms.
  if (options.has('inquire') || options.has('pss')) {
    throw new GpgError(ErrorCode.NOT_SUPPORTED, 'SETHASH --inquire is not supported');
  }
  let algo: number;
  let hexWord: string | undefined;
  if (options.has('hash')) {
    const name = options.get('hash') ?? '';
    if (name === 'none' || name === 'tls-md5sha1') {
      throw new GpgError(ErrorCode.UNSUPPORTED_ALGORITHM);
    }
    const id = HASH_ALGOS[name];
    if (id === undefined) throw paramError('invalid hash algorithm');
    algo = id;
    hexWord = words[0];
  } else {
    const idWord = words[0] ?? '';
    algo = /^[0-9]{1,4}$/.test(idWord) ? Number(idWord) : 0;
    if (!KNOWN_ALGO_IDS.has(algo)) throw new GpgError(ErrorCode.UNSUPPORTED_ALGORITHM);
    hexWord = words[1];
  }
  const digest = parseHexString(hexWord);
  if (!DIGEST_LENGTHS.has(digest.length)) throw paramError('unsupported length of hash');
  return { algo, digest };
}
