// The command-line program: builds the commander tree from the command modules and turns every
// outcome into an exit status (0 ok, 1 explained failure, 2 bad usage) and at most one line on
// stderr. Nothing here calls process.exit, so tests can drive `main` in-process.

import { runGitSign } from '../server/git-sign.js';
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { parseDuration } from '../system/flag-duration.js';
import { UsageError, UserError } from '../system/user-error.js';
import * as agent from './commands/agent.js';
import * as approve from './commands/approve.js';
import * as audit from './commands/audit.js';
import * as completion from './commands/completion.js';
import * as connect from './commands/connect.js';
import * as doctor from './commands/doctor.js';
import * as keys from './commands/keys.js';
import * as lock from './commands/lock.js';
import * as relay from './commands/relay.js';
import * as serve from './commands/serve.js';
import * as gitSign from './commands/git-sign.js';
import * as ssh from './commands/ssh.js';
import * as status from './commands/status.js';
import * as token from './commands/token.js';

/** What every command module exports: it adds its command(s) to the program. */
export interface CommandModule {
  register(program: Command): void;
}

export interface Io {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
}

// Order is the order `keytether --help` lists them in: workstation commands, then server side.
// (The command modules import helpers from this file; that cycle is safe because nothing here
// touches their exports until buildProgram runs.)
const COMMAND_MODULES: readonly CommandModule[] = [
  keys,
  agent,
  ssh,
  token,
  status,
  lock,
  approve,
  audit,
  doctor,
  relay,
  connect,
  serve,
  gitSign,
  completion,
];

/**
 * Reads `version` from keytether's package.json, found by walking up from this file, so it works
 * both from dist/cli/ and from cli/ under a TypeScript loader.
 */
export function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const file = join(dir, 'package.json');
    if (existsSync(file)) {
      try {
        const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: unknown; version?: unknown };
        if (pkg.name === 'keytether' && typeof pkg.version === 'string') return pkg.version;
      } catch {
        // An unreadable package.json further down (e.g. dist's own) is not ours; keep walking.
      }
    }
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return '0.0.0';
}

/**
 * KEYTETHER_HOME: `--home`, else env KEYTETHER_HOME, else `$XDG_DATA_HOME/keytether`, else
 * `~/.local/share/keytether`. Always absolute. Does not create or check the directory.
 */
export function resolveHome(
  opts: { home?: string | undefined } = {},
  env: NodeJS.ProcessEnv = process.env,
): string {
  if (opts.home) return resolve(opts.home);
  if (env.KEYTETHER_HOME) return resolve(env.KEYTETHER_HOME);
  // The XDG spec says a relative XDG_DATA_HOME is invalid and must be ignored.
  const xdg = env.XDG_DATA_HOME;
  if (xdg && isAbsolute(xdg)) return join(xdg, 'keytether');
  return join(env.HOME || homedir(), '.local', 'share', 'keytether');
}

/** Commander argument parser for durations: a bad value becomes a usage error (exit 2). */
export function durationArg(value: string): number {
  try {
    return parseDuration(value);
  } catch (e) {
    throw new InvalidArgumentError(e instanceof Error ? e.message : String(e));
  }
}

/** Commander argument parser for a whole number ≥ 1. */
export function positiveIntArg(value: string): number {
  if (!/^\d{1,15}$/.test(value) || Number(value) < 1) {
    throw new InvalidArgumentError(`'${value}' is not a whole number of at least 1`);
  }
  return Number(value);
}

/**
 * The `Example:` section of a command's --help (commander's addHelpText 'after'): invocations a
 * user can copy, which say more about how the flags combine than their descriptions do.
 */
export function examples(...lines: string[]): string {
  return `\nExample${lines.length > 1 ? 's' : ''}:\n${lines.map((l) => `  ${l}`).join('\n')}`;
}

/** Commander collector for repeatable options (`--relay A --relay B`). */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** `keys import` for a subcommand, '' for the program itself. */
export function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c && c.parent; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

const exitStatus = Symbol('keytether.exitStatus');
type WithStatus = Command & { [exitStatus]?: number };

function rootOf(cmd: Command): WithStatus {
  let c = cmd;
  while (c.parent) c = c.parent;
  return c as WithStatus;
}

/**
 * Wraps a command's action. The action may return an exit status (e.g. `connect -- CMD` passes
 * on CMD's); throwing UserError/UsageError gives 1/2 with its message, anything else is reported
 * as an internal error by `main`.
 */
export function action<A extends unknown[]>(
  fn: (...args: A) => void | number | Promise<void | number>,
): (...args: A) => Promise<void> {
  return async (...args: A) => {
    const status = await fn(...args);
    if (typeof status === 'number') {
      const cmd = args[args.length - 1];
      if (cmd instanceof Command) rootOf(cmd)[exitStatus] = status;
    }
  };
}

/** The handler for commands that are not implemented yet. */
export function notAvailable(): never {
  throw new UserError('not available yet');
}

const USAGE_CODES = new Set([
  'commander.unknownCommand',
  'commander.unknownOption',
  'commander.missingArgument',
  'commander.optionMissingArgument',
  'commander.missingMandatoryOptionValue',
  'commander.conflictingOption',
  'commander.excessArguments',
  'commander.invalidArgument',
  // Raised when a command that only has subcommands is run without one; its help is printed.
  'commander.help',
]);

/** Builds the whole program; `main` adds output and exit handling. */
export function buildProgram(): Command {
  const program = new Command('keytether');
  program
    .description(
      'Use your gpg keys from servers and CI while they stay on your workstation.\n' +
        'Workstation: keys, agent, ssh, token, status, lock, audit. Server/CI: relay, connect, serve. Both: doctor.',
    )
    .version(packageVersion(), '-V, --version', 'print the version')
    .option(
      '--home <dir>',
      'state directory (env KEYTETHER_HOME; default ~/.local/share/keytether)',
    )
    .option('--config <file>', 'config file (default $KEYTETHER_HOME/config.toml)')
    .helpOption('-h, --help', 'show help')
    .addHelpText(
      'after',
      '\nExit status: 0 success, 1 failure (explained on stderr), 2 bad usage.\n' +
        'Set KEYTETHER_DEBUG=1 to see stack traces of internal errors.\n' +
        examples('keytether agent', 'keytether ssh build@ci.example.com'),
    );
  for (const mod of COMMAND_MODULES) mod.register(program);
  return program;
}

/** Applies our output and exit handling to every command, including ones other modules added. */
function configureTree(cmd: Command, io: Io, failed: { cmd: Command | null }): void {
  cmd.exitOverride();
  cmd.configureOutput({
    writeOut: (s) => io.stdout.write(s),
    writeErr: (s) => io.stderr.write(s),
    // main prints usage errors itself, on one line, with the command they belong to.
    outputError: () => {
      failed.cmd = cmd;
    },
  });
  for (const sub of cmd.commands) configureTree(sub, io, failed);
}

// Past a screenful the rest is noise: fixing the first ones usually changes what follows.
const MAX_DETAIL_LINES = 20;

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ').trim();
}

function prefix(path: string): string {
  return path ? `keytether ${path}: ` : 'keytether: ';
}

/** Runs the CLI with `argv` (the arguments after the program name); resolves to the exit status. */
export async function main(argv: string[], io: Io = process): Promise<number> {
  // git calls its gpg.program with gpg's own options (-bsau KEY, --verify …): they are gpg's, not
  // ours, so they never meet our parser.
  if (argv[0] === 'git-sign' && argv[1] !== '--help' && argv[1] !== '-h') {
    try {
      return await runGitSign(argv.slice(1));
    } catch (e) {
      return reportInternal('git-sign', e, io);
    }
  }
  let program: Command;
  try {
    program = buildProgram();
  } catch (e) {
    return reportInternal('', e, io);
  }
  return runProgram(program, argv, io);
}

/** Parses `argv` with `program` and runs the chosen action, turning every outcome into a status. */
export async function runProgram(
  program: Command,
  argv: string[],
  io: Io = process,
): Promise<number> {
  const failed: { cmd: Command | null } = { cmd: null };
  configureTree(program, io, failed);
  let active = '';
  program.hook('preAction', (_self, actionCommand) => {
    active = commandPath(actionCommand);
  });

  try {
    await program.parseAsync(argv, { from: 'user' });
    return (program as WithStatus)[exitStatus] ?? 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return 0;
      const path = failed.cmd ? commandPath(failed.cmd) : active;
      if (e.code === 'commander.help') return 2;
      const message = oneLine(e.message.replace(/^error:\s*/, ''));
      const helpCmd = path ? `keytether ${path} --help` : 'keytether --help';
      io.stderr.write(`${prefix(path)}${message} (see '${helpCmd}')\n`);
      return USAGE_CODES.has(e.code) ? 2 : e.exitCode || 1;
    }
    if (e instanceof UserError) {
      io.stderr.write(`${prefix(active)}${oneLine(e.message)}\n`);
      const shown = e.details.slice(0, MAX_DETAIL_LINES);
      for (const d of shown) io.stderr.write(`  ${oneLine(d)}\n`);
      if (e.details.length > shown.length) {
        io.stderr.write(`  …and ${e.details.length - shown.length} more\n`);
      }
      return e.exitCode;
    }
    return reportInternal(active, e, io);
  }
}

function reportInternal(path: string, e: unknown, io: Io): number {
  io.stderr.write(`${prefix(path)}internal error: ${oneLine(errorMessage(e))}\n`);
  if (process.env.KEYTETHER_DEBUG === '1' && e instanceof Error && e.stack) {
    io.stderr.write(`${e.stack}\n`);
  }
  return 1;
}

function errorMessage(e: unknown): string {
  if (e instanceof Error) return e.message || e.name;
  return String(e);
}
