// Identity files and the user's ssh-agent presented to ssh2 as agents. ssh2 offers an agent's
// public keys first and only asks it to sign once the server accepts one, so an encrypted
// identity's passphrase is asked for only when that key would actually log in — as OpenSSH does.
// Both wrappers also remember what they offered, for the "which keys were tried" error sentence.

import { readFile } from 'node:fs/promises';
import ssh2 from 'ssh2';
import type { ParsedKey, SigningRequestOptions } from 'ssh2';

/** Private key files are a few KiB; anything bigger is not a key. */
const MAX_IDENTITY_BYTES = 64 * 1024;

export type AskPassphrase = (file: string) => Promise<string>;

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
        // Encrypted: offer the public half from FILE.pub when there is one, so the passphrase is
        // asked for only if the server would accept the key.
        const pub = await this.publicHalf(file);
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
    const ask = this.opts.askPassphrase;
    if (!ask) {
      this.notes.push({ file, outcome: 'no passphrase', detail: 'encrypted and no way to ask' });
      return undefined;
    }
    for (let attempt = 0; attempt < 3; attempt++) {
      let pass: Buffer;
      this.opts.onPrompt?.(true);
      try {
        pass = Buffer.from(await ask(file), 'utf8');
      } catch {
        this.notes.push({ file, outcome: 'no passphrase', detail: 'passphrase entry cancelled' });
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
