// Identity files and the user's ssh-agent presented to ssh2 as agents. ssh2 offers an agent's
// public keys first and only asks it to sign once the server accepts one, so an encrypted
// identity's passphrase is asked for only when that key would actually log in — as OpenSSH does.
// Both wrappers also remember what they offered, for the "which keys were tried" error sentence.

import { parseOpenSshEnvelope } from '../../protocol/ssh-agent/private-key-file.js';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import ssh2 from 'ssh2';
import type { ParsedKey, SigningRequestOptions } from 'ssh2';
import { blobKeyType } from './known-hosts.js';

/** Private key files are a few KiB; anything bigger is not a key. */
const MAX_IDENTITY_BYTES = 64 * 1024;

export interface PassphraseQuestion {
  /** The identity file. */
  file: string;
  /** `user@host` being logged in to, for the dialog. */
  login: string;
  /** 1-based; a retry follows a wrong passphrase. */
  attempt: number;
  tries: number;
}

/**
 * Resolves with the passphrase in a Buffer the caller zeroes; rejects (with a plain reason, never
 * the passphrase) when there is none: cancelled, timed out, no pinentry.
 */
export type AskPassphrase = (q: PassphraseQuestion) => Promise<Buffer>;

/** Decrypted identities kept for the life of one `keytether ssh`, as ssh-agent would. */
export type UnlockedIdentities = Map<string, ParsedKey>;

/** OpenSSH's number of passphrase tries per identity. */
const PASSPHRASE_TRIES = 3;

type SignCallback = (err: Error | undefined, signature?: Buffer) => void;
type IdentityCallback = (err: Error | undefined, keys?: ParsedKey[]) => void;
type SignOptions = SigningRequestOptions;

function asKey(k: ParsedKey | ParsedKey[] | Error): ParsedKey | Error {
  return Array.isArray(k) ? (k[0] ?? new Error('no key in file')) : k;
}

function isEncryptedKeyError(e: Error): boolean {
  return /encrypted|passphrase/i.test(e.message);
}

async function readSmall(file: string): Promise<Buffer> {
  const data = await readFile(file);
  if (data.length > MAX_IDENTITY_BYTES) {
    data.fill(0);
    throw Object.assign(new Error('file is too large to be a private key'), { code: 'EFBIG' });
  }
  return data;
}

interface Identity {
  file: string;
  pub: ParsedKey;
  priv?: ParsedKey;
}

/** What happened to one identity file, for error messages (never contains key material). */
export interface IdentityNote {
  file: string;
  outcome: 'offered' | 'missing' | 'unreadable' | 'no passphrase';
  detail?: string;
}

export class IdentityFileAgent extends ssh2.BaseAgent<ParsedKey> {
  readonly notes: IdentityNote[] = [];
  private identities: Identity[] | undefined;

  constructor(
    private readonly files: readonly string[],
    private readonly opts: {
      askPassphrase?: AskPassphrase | undefined;
      /** `user@host`, for the passphrase dialog. */
      login?: string;
      /** Identities unlocked by earlier connections of this process: a reconnect asks no one. */
      unlocked?: UnlockedIdentities | undefined;
      /** The user's ssh-agent: a file whose key it holds is signed there, never unlocked. */
      agent?: ssh2.BaseAgent<ParsedKey>;
      /** Missing files are OpenSSH's unconfigured defaults: skip them silently. */
      quietMissing?: boolean;
      /** Called around a passphrase prompt, so connection timers can pause while a human types. */
      onPrompt?: (active: boolean) => void;
    } = {},
  ) {
    super();
  }

  getIdentities(cb: IdentityCallback): void {
    this.load().then(
      (ids) =>
        cb(
          undefined,
          ids.map((i) => i.pub),
        ),
      (e: unknown) => cb(e instanceof Error ? e : new Error(String(e))),
    );
  }

  sign(
    pubKey: ParsedKey,
    data: Buffer,
    options: SignOptions | SignCallback,
    cb?: SignCallback,
  ): void {
    const done = typeof options === 'function' ? options : cb;
    const hash = typeof options === 'function' ? undefined : options.hash;
    if (!done) return;
    const id = this.identities?.find((i) => i.pub.getPublicSSH().equals(pubKey.getPublicSSH()));
    if (!id) {
      done(new Error('asked to sign with a key that was not offered'));
      return;
    }
    this.agentHolding(id).then(
      (agentKey) => {
        if (agentKey && this.opts.agent) {
          this.opts.agent.sign(agentKey, data, hash ? { hash } : {}, (err, sig) =>
            done(err ?? undefined, sig),
          );
          return;
        }
        this.signWithFile(id, data, hash, done);
      },
      () => this.signWithFile(id, data, hash, done),
    );
  }

  /** The agent's copy of ID's key, when the agent holds it. */
  private agentHolding(id: Identity): Promise<ParsedKey | undefined> {
    const agent = this.opts.agent;
    if (!agent || id.priv) return Promise.resolve(undefined);
    return new Promise((resolve) =>
      agent.getIdentities((err, keys) => {
        const blob = id.pub.getPublicSSH();
        resolve(
          err
            ? undefined
            : ((keys ?? []).find((k) => asPublic(k)?.equals(blob)) as ParsedKey | undefined),
        );
      }),
    );
  }

  private signWithFile(
    id: Identity,
    data: Buffer,
    hash: SignOptions['hash'] | undefined,
    done: SignCallback,
  ): void {
    this.unlock(id).then(
      (priv) => {
        const sig = priv.sign(data, hash);
        if (sig instanceof Error) done(sig);
        else done(undefined, sig);
      },
      (e: unknown) => done(e instanceof Error ? e : new Error(String(e))),
    );
  }

  private async load(): Promise<Identity[]> {
    if (this.identities) return this.identities;
    const out: Identity[] = [];
    for (const file of this.files) {
      let data: Buffer;
      try {
        data = await readSmall(file);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'ENOTDIR') {
          if (!this.opts.quietMissing) this.notes.push({ file, outcome: 'missing' });
        } else {
          this.notes.push({ file, outcome: 'unreadable', detail: code ?? 'read error' });
        }
        continue;
      }
      try {
        const parsed = asKey(ssh2.utils.parseKey(data));
        if (!(parsed instanceof Error)) {
          out.push({ file, pub: parsed, priv: parsed });
          this.notes.push({ file, outcome: 'offered' });
          continue;
        }
        if (!isEncryptedKeyError(parsed)) {
          this.notes.push({
            file,
            outcome: 'unreadable',
            detail: 'not a private key ssh2 can use',
          });
          continue;
        }
        // Encrypted: offer the public half from FILE.pub, or from the file itself (OpenSSH's
        // format keeps it in clear), so the passphrase is asked for only if the server would
        // accept the key.
        const pub = (await this.publicHalf(file)) ?? opensshPublicKey(data);
        if (pub) {
          out.push({ file, pub });
          this.notes.push({ file, outcome: 'offered' });
          continue;
        }
        const priv = await this.decrypt(file, data);
        if (priv) {
          out.push({ file, pub: priv, priv });
          this.notes.push({ file, outcome: 'offered' });
        }
      } finally {
        data.fill(0);
      }
    }
    this.identities = out;
    return out;
  }

  private async publicHalf(file: string): Promise<ParsedKey | undefined> {
    try {
      const k = asKey(ssh2.utils.parseKey(await readSmall(file + '.pub')));
      return k instanceof Error ? undefined : k;
    } catch {
      return undefined;
    }
  }

  private async unlock(id: Identity): Promise<ParsedKey> {
    if (id.priv) return id.priv;
    const data = await readSmall(id.file);
    try {
      const priv = await this.decrypt(id.file, data);
      if (!priv) throw new Error(`no passphrase for ${id.file}`);
      if (!priv.getPublicSSH().equals(id.pub.getPublicSSH())) {
        throw new Error(`${id.file}.pub does not belong to ${id.file}`);
      }
      id.priv = priv;
      return priv;
    } finally {
      data.fill(0);
    }
  }

  private async decrypt(file: string, data: Buffer): Promise<ParsedKey | undefined> {
    // Keyed by content too, so a file replaced since is asked for again.
    const keptAs = `${file}\0${createHash('sha256').update(data).digest('hex')}`;
    const kept = this.opts.unlocked?.get(keptAs);
    if (kept) return kept;
    const key = await this.askAndDecrypt(file, data);
    if (key) this.opts.unlocked?.set(keptAs, key);
    return key;
  }

  private async askAndDecrypt(file: string, data: Buffer): Promise<ParsedKey | undefined> {
    const ask = this.opts.askPassphrase;
    if (!ask) {
      this.notes.push({ file, outcome: 'no passphrase', detail: 'encrypted and no way to ask' });
      return undefined;
    }
    for (let attempt = 1; attempt <= PASSPHRASE_TRIES; attempt++) {
      let pass: Buffer;
      this.opts.onPrompt?.(true);
      try {
        pass = await ask({ file, login: this.opts.login ?? '', attempt, tries: PASSPHRASE_TRIES });
      } catch (e) {
        this.notes.push({
          file,
          outcome: 'no passphrase',
          detail: e instanceof Error ? e.message : 'passphrase entry cancelled',
        });
        return undefined;
      } finally {
        this.opts.onPrompt?.(false);
      }
      try {
        const k = asKey(ssh2.utils.parseKey(data, pass));
        if (!(k instanceof Error)) return k;
      } finally {
        pass.fill(0);
      }
    }
    this.notes.push({ file, outcome: 'no passphrase', detail: 'wrong passphrase three times' });
    return undefined;
  }
}

function asPublic(k: ParsedKey | Buffer | unknown): Buffer | undefined {
  if (Buffer.isBuffer(k)) return k;
  const key = k as { getPublicSSH?: () => Buffer };
  return typeof key.getPublicSSH === 'function' ? key.getPublicSSH() : undefined;
}

/**
 * The public key an encrypted `openssh-key-v1` file carries in clear ahead of the encrypted part
 * (PROTOCOL.key: magic, cipher, kdf, kdf options, key count, then each public key).
 */
export function opensshPublicKey(data: Buffer): ParsedKey | undefined {
  let blob: Buffer;
  try {
    blob = parseOpenSshEnvelope(data.toString('latin1')).publicBlob;
  } catch {
    return undefined;
  }
  const type = blobKeyType(blob);
  if (!type) return undefined;
  const k = asKey(ssh2.utils.parseKey(`${type} ${blob.toString('base64')}`));
  return k instanceof Error ? undefined : k;
}

/** The user's ssh-agent, counting what it offered. */
export class CountingAgent extends ssh2.BaseAgent<ParsedKey> {
  offered = 0;
  failure: string | undefined;
  private readonly inner: ssh2.BaseAgent;

  constructor(readonly socketPath: string) {
    super();
    this.inner = ssh2.createAgent(socketPath);
  }

  getIdentities(cb: IdentityCallback): void {
    this.inner.getIdentities((err, keys) => {
      if (err) {
        this.failure = err.message;
        cb(err);
        return;
      }
      const list = (keys ?? []) as ParsedKey[];
      this.offered = list.length;
      cb(undefined, list);
    });
  }

  sign(
    pubKey: ParsedKey,
    data: Buffer,
    options: SignOptions | SignCallback,
    cb?: SignCallback,
  ): void {
    const done = typeof options === 'function' ? options : cb;
    const opts = typeof options === 'function' ? {} : options;
    this.inner.sign(pubKey, data, opts, (err, sig) => done?.(err ?? undefined, sig));
  }
}
