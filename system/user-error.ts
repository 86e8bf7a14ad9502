// Expected failures, raised by every layer above protocol/, carry a one-sentence message for the
// user and an exit status; the CLI entry point prints `keytether <command>: <message>` and exits with it, never a stack trace.

/** A failure the user can act on: exit status 1. The message says what failed, why, what to do. */
export class UserError extends Error {
  readonly exitCode: number = 1;
  /**
   * Items the message introduces (the problems of a config file), printed one per line under it,
   * because a user fixing a file wants them all at once rather than one per run.
   */
  readonly details: readonly string[];
  constructor(message: string, details: readonly string[] = []) {
    super(message);
    this.name = 'UserError';
    this.details = details;
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
