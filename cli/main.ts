#!/usr/bin/env node
// The `keytether` executable. All logic lives in program.ts; this file only binds it to the process.
import { main } from './program.js';

// `keytether keys export | head` closes our stdout early; that is the reader's choice, not a failure.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});

const status = await main(process.argv.slice(2));
if (status === 0) {
  // Let pending output drain; a command that succeeded has closed its own handles.
  process.exitCode = 0;
} else {
  // A failed command may leave sockets or timers behind; don't let them keep the process alive.
  // stdout/stderr writes to files, pipes and terminals are synchronous on POSIX, so nothing is lost.
  process.exit(status);
}
