// Under CI=true the run has to cover every test: a test whose prerequisite is missing fails with
// a sentence naming it instead of skipping, so a green CI never hides an untested feature.
// Locally the same test skips, because npm test's pretest (scripts/test-prerequisites.mjs) only
// warns about optional pieces.

import type { Test } from 'tap';

export const ciRunsEverything = process.env.CI === 'true' || process.env.CI === '1';

/**
 * t.test(name, fn), unless MISSING says what this machine lacks for it (a sentence saying what to
 * install or how to run it): then it is skipped with that reason, or fails with it under CI.
 */
export function testNeeding(
  t: Test,
  name: string,
  missing: string | false,
  fn: (t: Test) => Promise<void>,
): ReturnType<Test['test']> {
  if (!missing) return t.test(name, fn);
  if (ciRunsEverything) {
    return t.test(name, async (t) => {
      t.fail(`CI runs every test, and this one ${missing}`);
    });
  }
  return t.test(name, { skip: missing }, fn);
}
