// Expected failures carry a one-sentence message for the user and an exit status; the CLI entry
// point prints `keytether <command>: <message>` and exits with it, never a stack trace.

/** A failure the user can act on: exit status 1. The message says what failed, why, what to do. */
export class UserError extends Error {
  readonly exitCode: number = 1;
  constructor(message: string) {
    super(message);
    this.name = 'UserError';
  }
}

/** Bad command-line usage: exit status 2. */
export class UsageError extends UserError {
  override readonly exitCode: number = 2;
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}
