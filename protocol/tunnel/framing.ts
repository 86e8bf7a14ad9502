// Length-prefixed frames: a 4-byte big-endian payload length, then the payload. The length is
// checked against the limit before a single payload byte is buffered, so a peer can make us hold
// at most `maxFrameBytes` (+3 bytes of an unfinished length prefix) whatever it sends.

export const FRAME_PREFIX_BYTES = 4;
export const DEFAULT_MAX_FRAME_BYTES = 1 << 20;
/** A frame must hold at least the format byte and the header length (see messages.ts). */
export const MIN_FRAME_BYTES = 5;
/** Hard ceiling for the configurable limit: far above any message, far below memory trouble. */
export const MAX_FRAME_LIMIT = 64 << 20;

export type FrameEvent =
  | { readonly type: 'frame'; readonly payload: Buffer; readonly bytes: number }
  /** The stream is unusable from here on; the reader ignores everything after it. */
  | { readonly type: 'error'; readonly reason: string; readonly length?: number };

export class FrameReader {
  readonly maxFrameBytes: number;
  private readonly prefix = Buffer.alloc(FRAME_PREFIX_BYTES);
  private prefixLength = 0;
  /** The payload being filled, allocated only once its announced length passed the check. */
  private payload: Buffer | null = null;
  private payloadLength = 0;
  private failed = false;

  constructor(maxFrameBytes = DEFAULT_MAX_FRAME_BYTES) {
    if (
      !Number.isInteger(maxFrameBytes) ||
      maxFrameBytes < MIN_FRAME_BYTES ||
      maxFrameBytes > MAX_FRAME_LIMIT
    ) {
      throw new RangeError(
        `maxFrameBytes must be an integer from ${MIN_FRAME_BYTES} to ${MAX_FRAME_LIMIT}`,
      );
    }
    this.maxFrameBytes = maxFrameBytes;
  }

  /** Bytes held for an unfinished frame. */
  get bufferedBytes(): number {
    return this.prefixLength + this.payloadLength;
  }

  /** True while a frame has been started but not finished (EOF now would truncate it). */
  get midFrame(): boolean {
    return this.prefixLength > 0 || this.payload !== null;
  }

  push(chunk: Uint8Array): FrameEvent[] {
    if (this.failed) return [];
    const buf = Buffer.isBuffer(chunk)
      ? chunk
      : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
    const events: FrameEvent[] = [];
    let pos = 0;
    while (pos < buf.length) {
      if (this.payload === null) {
        let length: number;
        if (this.prefixLength === 0 && buf.length - pos >= FRAME_PREFIX_BYTES) {
          length = buf.readUInt32BE(pos);
          pos += FRAME_PREFIX_BYTES;
        } else {
          const take = Math.min(FRAME_PREFIX_BYTES - this.prefixLength, buf.length - pos);
          buf.copy(this.prefix, this.prefixLength, pos, pos + take);
          this.prefixLength += take;
          pos += take;
          if (this.prefixLength < FRAME_PREFIX_BYTES) break;
          length = this.prefix.readUInt32BE(0);
          this.prefixLength = 0;
        }
        const bad = this.checkLength(length);
        if (bad) {
          this.failed = true;
          events.push(bad);
          return events;
        }
        // Fast path: the whole frame is in this chunk, hand out a view instead of copying.
        if (buf.length - pos >= length) {
          events.push({
            type: 'frame',
            payload: buf.subarray(pos, pos + length),
            bytes: length + FRAME_PREFIX_BYTES,
          });
          pos += length;
          continue;
        }
        this.payload = Buffer.allocUnsafe(length);
        this.payloadLength = 0;
      }
      const payload = this.payload;
      const take = Math.min(payload.length - this.payloadLength, buf.length - pos);
      buf.copy(payload, this.payloadLength, pos, pos + take);
      this.payloadLength += take;
      pos += take;
      if (this.payloadLength === payload.length) {
        this.payload = null;
        this.payloadLength = 0;
        events.push({ type: 'frame', payload, bytes: payload.length + FRAME_PREFIX_BYTES });
      }
    }
    return events;
  }

  /** Call at EOF: reports a frame cut short, if any, and forgets its bytes. */
  end(): FrameEvent | null {
    if (this.failed || !this.midFrame) return null;
    const had = this.bufferedBytes;
    this.reset();
    return {
      type: 'error',
      reason: `the stream ended inside a frame (${had} bytes of it received)`,
    };
  }

  /** Drops whatever is buffered (it may hold request data) and ignores all further input. */
  reset(): void {
    this.payload?.fill(0, 0, this.payloadLength);
    this.payload = null;
    this.payloadLength = 0;
    this.prefixLength = 0;
    this.failed = true;
  }

  private checkLength(length: number): FrameEvent | null {
    if (length > this.maxFrameBytes) {
      return {
        type: 'error',
        reason: `received a frame of ${length} bytes, more than the ${this.maxFrameBytes} allowed`,
        length,
      };
    }
    if (length < MIN_FRAME_BYTES) {
      return { type: 'error', reason: `received a malformed frame of ${length} bytes`, length };
    }
    return null;
  }
}
