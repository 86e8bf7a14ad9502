// The one error a config file or flag produces, and how a zod issue finds the value it is about.

/** A config file or flag the holder cannot use; the message is one sentence for the user. */
export class ConfigError extends Error {
  /** Set when the bad value came from a command-line flag (the CLI reports those as usage errors). */
  readonly flag: string | undefined;
  /** When the file has several problems: one sentence each, in the order to fix them. */
  readonly problems: readonly string[];
  constructor(message: string, flag?: string, problems: readonly string[] = []) {
    super(message);
    this.name = 'ConfigError';
    this.flag = flag;
    this.problems = problems;
  }
}

/** The raw value at PATH, for telling a missing setting from a wrong one. */
export function valueAt(raw: unknown, path: PropertyKey[]): unknown {
  let v = raw;
  for (const k of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[k];
  }
  return v;
}
