// gpg-error values as gpg-agent puts them on the wire: (source << 24) | code, with source 4
// ("GPG Agent"). gpg only looks at the number, but the texts match libgpg-error's strerror so
// that gpg-connect-agent sessions read the same as against the real agent.

export const SOURCE_GPG_AGENT = 4;
export const SOURCE_PINENTRY = 5;

export const ErrorCode = {
  GENERAL: 1,
  DIGEST_ALGO: 5,
  BAD_PASSPHRASE: 11,
  NO_SECKEY: 17,
  NOT_FOUND: 27,
  INV_LENGTH: 139,
  INV_VALUE: 55,
  NO_DATA: 58,
  NOT_SUPPORTED: 60,
  TIMEOUT: 62,
  NOT_IMPLEMENTED: 69,
  TRUNCATED: 74,
  INV_DATA: 79,
  INV_SEXP: 83,
  UNSUPPORTED_ALGORITHM: 84,
  NO_PIN_ENTRY: 85,
  NO_AGENT: 77,
  NOT_TRUSTED: 98,
  CANCELED: 99,
  NOT_CONFIRMED: 114,
  NO_SCDAEMON: 119,
  MISSING_VALUE: 128,
  UNKNOWN_OPTION: 174,
  LIMIT_REACHED: 183,
  FULLY_CANCELED: 198,
  FORBIDDEN: 251,
  FALSE: 256,
  ASS_GENERAL: 257,
  ASS_CONNECT_FAILED: 259,
  ASS_INV_RESPONSE: 260,
  ASS_INCOMPLETE_LINE: 262,
  ASS_LINE_TOO_LONG: 263,
  ASS_NO_INQUIRE_CB: 266,
  ASS_TOO_MUCH_DATA: 273,
  ASS_UNEXPECTED_CMD: 274,
  ASS_UNKNOWN_CMD: 275,
  ASS_SYNTAX: 276,
  ASS_CANCELED: 277,
  ASS_PARAMETER: 280,
  /** GPG_ERR_ENOENT: a system error (0x8000 | errno index), what a missing key file gives. */
  ENOENT: 32849,
} as const;

export type ErrorCodeName = keyof typeof ErrorCode;

const TEXTS: Record<number, string> = {
  [ErrorCode.GENERAL]: 'General error',
  [ErrorCode.DIGEST_ALGO]: 'Invalid digest algorithm',
  [ErrorCode.BAD_PASSPHRASE]: 'Bad passphrase',
  [ErrorCode.NO_SECKEY]: 'No secret key',
  [ErrorCode.NOT_FOUND]: 'Not found',
  [ErrorCode.INV_LENGTH]: 'Invalid length',
  [ErrorCode.INV_VALUE]: 'Invalid value',
  [ErrorCode.NO_DATA]: 'No data',
  [ErrorCode.NOT_SUPPORTED]: 'Not supported',
  [ErrorCode.TIMEOUT]: 'Timeout',
  [ErrorCode.NOT_IMPLEMENTED]: 'Not implemented',
  [ErrorCode.TRUNCATED]: 'Result truncated',
  [ErrorCode.INV_DATA]: 'Invalid data',
  [ErrorCode.INV_SEXP]: 'Invalid S-expression',
  [ErrorCode.UNSUPPORTED_ALGORITHM]: 'Unsupported algorithm',
  [ErrorCode.NO_PIN_ENTRY]: 'No pinentry',
  [ErrorCode.NO_AGENT]: 'No agent running',
  [ErrorCode.NOT_TRUSTED]: 'Not trusted',
  [ErrorCode.CANCELED]: 'Operation cancelled',
  [ErrorCode.NOT_CONFIRMED]: 'Not confirmed',
  [ErrorCode.NO_SCDAEMON]: 'No SmartCard daemon',
  [ErrorCode.MISSING_VALUE]: 'Missing value',
  [ErrorCode.UNKNOWN_OPTION]: 'Unknown option',
  [ErrorCode.LIMIT_REACHED]: 'Limit reached',
  [ErrorCode.FULLY_CANCELED]: 'Operation fully cancelled',
  [ErrorCode.FORBIDDEN]: 'Forbidden',
  [ErrorCode.FALSE]: 'False',
  [ErrorCode.ASS_GENERAL]: 'General IPC error',
  [ErrorCode.ASS_CONNECT_FAILED]: 'IPC connect call failed',
  [ErrorCode.ASS_INV_RESPONSE]: 'Invalid response from IPC server',
  [ErrorCode.ASS_INCOMPLETE_LINE]: 'Incomplete line passed to IPC',
  [ErrorCode.ASS_LINE_TOO_LONG]: 'Line passed to IPC too long',
  [ErrorCode.ASS_NO_INQUIRE_CB]: 'No inquire callback in IPC',
  [ErrorCode.ASS_TOO_MUCH_DATA]: 'Too much data for IPC layer',
  [ErrorCode.ASS_UNEXPECTED_CMD]: 'Unexpected IPC command',
  [ErrorCode.ASS_UNKNOWN_CMD]: 'Unknown IPC command',
  [ErrorCode.ASS_SYNTAX]: 'IPC syntax error',
  [ErrorCode.ASS_CANCELED]: 'IPC call has been cancelled',
  [ErrorCode.ASS_PARAMETER]: 'IPC parameter error',
  [ErrorCode.ENOENT]: 'No such file or directory',
};

const SOURCE_NAMES: Record<number, string> = {
  0: 'Unspecified source',
  4: 'GPG Agent',
  5: 'Pinentry',
  6: 'SCD',
  15: 'Assuan',
  32: 'User defined source 1',
};

export function makeErr(code: number, source = SOURCE_GPG_AGENT): number {
  return ((source & 127) << 24) | (code & 0xffff);
}

export function errCode(value: number): number {
  return value & 0xffff;
}

export function errSource(value: number): number {
  return (value >>> 24) & 127;
}

export function errText(code: number): string {
  return TEXTS[code & 0xffff] ?? `Unknown error code ${code & 0xffff}`;
}

/**
 * An error that travels to a gpg client as `ERR <value> <text> <source>[ - detail]`.
 * `detail` is shown to humans only and must never contain secret material.
 */
export class GpgError extends Error {
  readonly code: number;
  readonly source: number;
  readonly detail: string | undefined;

  constructor(code: number, detail?: string, source = SOURCE_GPG_AGENT) {
    super(detail ? `${errText(code)} - ${detail}` : errText(code));
    this.name = 'GpgError';
    this.code = code & 0xffff;
    this.source = source;
    this.detail = detail;
  }

  get value(): number {
    return makeErr(this.code, this.source);
  }

  /** The ERR line body (without the trailing LF), in libassuan's layout. */
  toAssuan(): string {
    const src = SOURCE_NAMES[this.source] ?? `source ${this.source}`;
    const base = `ERR ${this.value} ${errText(this.code).slice(0, 50)} <${src.slice(0, 30)}>`;
    if (!this.detail) return base;
    return `${base} - ${this.detail.replace(/[\r\n]/g, ' ').slice(0, 100)}`;
  }

  /** Rebuilds an error from a received ERR value, keeping its source. */
  static fromValue(value: number, detail?: string): GpgError {
    return new GpgError(errCode(value), detail, errSource(value));
  }
}

export function gpgErr(name: ErrorCodeName, detail?: string): GpgError {
  return new GpgError(ErrorCode[name], detail);
}

/** Any thrown value → a GpgError; unexpected ones become GENERAL without leaking their text. */
export function toGpgError(e: unknown): GpgError {
  if (e instanceof GpgError) return e;
  return new GpgError(ErrorCode.GENERAL);
}
