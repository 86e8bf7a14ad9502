// Splits an Assuan byte stream into lines. Binary-safe: only LF ends a line, one CR before it is
// dropped, and nothing is decoded. Memory is bounded by the line limit whatever the peer sends.

/**
 * libassuan's ASSUAN_LINELENGTH is 1002 = 1000 + [CR,]LF and its reader needs the LF within those
 * 1002 bytes, so up to 1001 bytes (a CR included) may precede the LF. Checked against gpg-agent
 * 2.2.40: 1001 bytes + LF is accepted, 1002 + LF drops the connection.
 */
export const MAX_LINE_BYTES = 1001;

export type LineEvent =
  | { readonly type: 'line'; readonly line: Buffer }
  /** A line exceeded the limit; reported once, and its bytes up to the next LF are dropped. */
  | { readonly type: 'too-long' }
  /** EOF arrived inside a line (`length` bytes, which are dropped). */
  | { readonly type: 'incomplete'; readonly length: number };

const LF = 0x0a;
const CR = 0x0d;

export class LineReader {
  readonly maxLineBytes: number;
  private readonly partial: Buffer;
  private partialLength = 0;
  private skipping = false;

  constructor(maxLineBytes = MAX_LINE_BYTES) {
    if (!Number.isInteger(maxLineBytes) || maxLineBytes < 1 || maxLineBytes > 1 << 24) {
      throw new RangeError('maxLineBytes out of range');
    }
    this.maxLineBytes = maxLineBytes;
    this.partial = Buffer.alloc(maxLineBytes);
  }

  /** Bytes held for an unfinished line (never more than maxLineBytes). */
  get bufferedBytes(): number {
    return this.partialLength;
  }

  push(chunk: Uint8Array): LineEvent[] {
    const events: LineEvent[] = [];
    const buf = Buffer.isBuffer(chunk)
      ? chunk
      : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
    let pos = 0;
    while (pos < buf.length) {
      const lf = buf.indexOf(LF, pos);
      const end = lf < 0 ? buf.length : lf;
      if (this.skipping) {
        if (lf >= 0) this.skipping = false;
      } else {
        const piece = end - pos;
        if (this.partialLength + piece > this.maxLineBytes) {
          events.push({ type: 'too-long' });
          this.clearPartial();
          this.skipping = lf < 0;
        } else if (lf < 0) {
          buf.copy(this.partial, this.partialLength, pos, end);
          this.partialLength += piece;
        } else if (this.partialLength === 0) {
          events.push({ type: 'line', line: stripCr(buf.subarray(pos, end)) });
        } else {
          const line = Buffer.allocUnsafe(this.partialLength + piece);
          this.partial.copy(line, 0, 0, this.partialLength);
          buf.copy(line, this.partialLength, pos, end);
          this.clearPartial();
          events.push({ type: 'line', line: stripCr(line) });
        }
      }
      pos = lf < 0 ? buf.length : lf + 1;
    }
    return events;
  }

  /** Call at EOF: reports a dangling partial line, if any. */
  end(): LineEvent | null {
    const length = this.partialLength;
    this.clearPartial();
    const wasSkipping = this.skipping;
    this.skipping = false;
    if (length > 0 && !wasSkipping) return { type: 'incomplete', length };
    return null;
  }

  // Partial lines may be passphrases in an INQUIRE answer; don't leave them in a reused buffer.
  private clearPartial(): void {
    if (this.partialLength > 0) this.partial.fill(0, 0, this.partialLength);
    this.partialLength = 0;
  }
}

function stripCr(line: Buffer): Buffer {
  return line.length > 0 && line[line.length - 1] === CR ? line.subarray(0, line.length - 1) : line;
}
