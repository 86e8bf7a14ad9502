#!/usr/bin/env node
// A pinentry for tests: speaks the pinentry Assuan protocol on stdin/stdout the way pinentry 1.2
// does, but takes its answers from a JSON script instead of a person.
//
//   KEYTETHER_TEST_PINENTRY_SCRIPT=<file>  {"answers": [...], "confirm": [...], "hang": false,
//                                           "chunk": 0}
//     answers: consumed one per GETPIN, in order, across all invocations. Each item is
//       a string (the passphrase), null or {"cancel": true} (user pressed Cancel),
//       {"timeout": true} (the pinentry's own SETTIMEOUT expired), {"hang": true} (never
//       answer), {"crash": true} (exit without a reply), {"error": <gpg-error value>}.
//       Exhausted list → Cancel.
//     confirm: consumed one per CONFIRM/MESSAGE: "ok" | "cancel" | "notok" | "hang" | "crash".
//       Exhausted list → Cancel.
//     hang: true → never answer GETPIN or CONFIRM at all (for timeout tests).
//     chunk: >0 → split the GETPIN D data into lines of at most this many escaped bytes.
//   KEYTETHER_TEST_PINENTRY_LOG=<file>  JSON lines {pid, cmd, args[, text]}: one "#spawn" line per
//     invocation (args = argv, plus env), then one line per command received. The passphrase
//     handed out is never written.
//
// Answers are claimed by exclusively creating "<script>.claims/<kind>-<index>" (O_EXCL), so
// concurrent invocations each get a distinct answer without a lock that could be left behind.

import fs from 'node:fs';
import path from 'node:path';

const SOURCE_PINENTRY = 5;
const err = (code, source = SOURCE_PINENTRY) => ((source & 127) << 24) | code;
const E = {
  CANCELED: [err(99), 'Operation cancelled'],
  NOT_CONFIRMED: [err(114), 'Not confirmed'],
  TIMEOUT: [err(62), 'Timeout'],
  UNKNOWN_OPTION: [err(174), 'Unknown option'],
  // pinentry 1.2.1 reports unknown commands with source 32, as observed on the real one.
  UNKNOWN_CMD: [err(275, 32), 'Unknown IPC command', 'User defined source 1'],
  SYNTAX: [err(276), 'IPC syntax error'],
  PARAMETER: [err(280), 'IPC parameter error'],
  LINE_TOO_LONG: [err(263), 'Line passed to IPC too long'],
};
const MAX_LINE = 1002;

// Option names pinentry 1.2 accepts (pinentry.c option_handler); anything else is refused.
const KNOWN_OPTIONS = new Set([
  'no-grab',
  'grab',
  'debug-wait',
  'display',
  'ttyname',
  'ttytype',
  'ttyalert',
  'lc-ctype',
  'lc-messages',
  'owner',
  'parent-wid',
  'touch-file',
  'default-ok',
  'default-cancel',
  'default-yes',
  'default-no',
  'default-prompt',
  'default-pwmngr',
  'default-cf-visi',
  'default-tt-visi',
  'default-tt-hide',
  'default-capshint',
  'allow-external-password-cache',
  'allow-emacs-prompt',
  'invisible-char',
  'formatted-passphrase',
  'formatted-passphrase-hint',
  'constraints-enforce',
  'constraints-hint-short',
  'constraints-hint-long',
  'constraints-error-title',
]);
const TEXT_COMMANDS = new Set([
  'SETDESC',
  'SETPROMPT',
  'SETTITLE',
  'SETERROR',
  'SETOK',
  'SETCANCEL',
  'SETNOTOK',
  'SETREPEAT',
  'SETREPEATERROR',
  'SETREPEATOK',
  'SETQUALITYBAR',
  'SETQUALITYBAR_TT',
  'SETGENPIN',
  'SETGENPIN_TT',
]);
const SILENT_OK = new Set([...TEXT_COMMANDS, 'SETKEYINFO', 'SETTIMEOUT', 'CLEARPASSPHRASE', 'NOP']);
const LOGGED_ENV = ['DISPLAY', 'WAYLAND_DISPLAY', 'XAUTHORITY', 'GPG_TTY', 'TERM', 'LANG'];

const scriptFile = process.env.KEYTETHER_TEST_PINENTRY_SCRIPT;
const logFile = process.env.KEYTETHER_TEST_PINENTRY_LOG;

let script = { answers: [], confirm: [] };
if (scriptFile) script = JSON.parse(fs.readFileSync(scriptFile, 'utf8'));

function log(cmd, args, extra = {}) {
  if (!logFile) return;
  // One small appendFileSync per line: O_APPEND keeps lines from concurrent pinentries whole.
  fs.appendFileSync(logFile, JSON.stringify({ pid: process.pid, cmd, args, ...extra }) + '\n');
}

function claim(kind, list) {
  if (!scriptFile) return undefined;
  const dir = `${scriptFile}.claims`;
  fs.mkdirSync(dir, { recursive: true });
  for (let i = 0; i < list.length; i++) {
    try {
      fs.closeSync(fs.openSync(path.join(dir, `${kind}-${i}`), 'wx'));
      return { item: list[i] };
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
    }
  }
  return undefined;
}

function percentDecode(s) {
  const raw = Buffer.from(s, 'utf8');
  const out = [];
  for (let i = 0; i < raw.length; i++) {
    const hex = raw.subarray(i + 1, i + 3).toString('latin1');
    if (raw[i] === 0x25 && /^[0-9A-Fa-f]{2}$/.test(hex)) {
      out.push(parseInt(hex, 16));
      i += 2;
    } else out.push(raw[i]);
  }
  return Buffer.from(out);
}

function percentEncodeData(buf) {
  let out = '';
  for (const b of buf) {
    if (b === 0x25 || b === 0x0a || b === 0x0d)
      out += '%' + b.toString(16).toUpperCase().padStart(2, '0');
    else out += String.fromCharCode(b);
  }
  return Buffer.from(out, 'latin1');
}

function write(line) {
  process.stdout.write(line + '\n');
}
function ok(text) {
  write(text ? `OK ${text}` : 'OK');
}
function fail([value, text, source = 'Pinentry']) {
  write(`ERR ${value} ${text} <${source}>`);
}

function sendData(buf) {
  const escaped = percentEncodeData(buf);
  const chunk = Number(script.chunk) > 0 ? Number(script.chunk) : 990;
  let i = 0;
  while (i < escaped.length) {
    let end = Math.min(i + chunk, escaped.length);
    // Never cut a %XX escape in half.
    if (end < escaped.length) {
      if (escaped[end - 1] === 0x25) end -= 1;
      else if (end >= 2 && escaped[end - 2] === 0x25) end -= 2;
    }
    process.stdout.write(
      Buffer.concat([Buffer.from('D '), escaped.subarray(i, end), Buffer.from('\n')]),
    );
    i = end;
  }
}

let hanging = false;

function die() {
  process.exit(3);
}

function handleGetpin() {
  if (script.hang) {
    hanging = true;
    return;
  }
  const c = claim('answer', script.answers ?? []);
  const item = c ? c.item : null;
  if (typeof item === 'string') {
    const pin = Buffer.from(item, 'utf8');
    sendData(pin);
    pin.fill(0);
    ok();
  } else if (item === null || item?.cancel) fail(E.CANCELED);
  else if (item.timeout) {
    write(`S ERROR scripted.timeout ${E.TIMEOUT[0]} `);
    fail(E.TIMEOUT);
  } else if (item.hang) hanging = true;
  else if (item.crash) die();
  else if (typeof item.error === 'number') write(`ERR ${item.error} scripted error <Pinentry>`);
  else fail(E.CANCELED);
}

function handleConfirm() {
  if (script.hang) {
    hanging = true;
    return;
  }
  const c = claim('confirm', script.confirm ?? []);
  const item = c ? c.item : 'cancel';
  if (item === 'ok') ok();
  else if (item === 'notok') fail(E.NOT_CONFIRMED);
  else if (item === 'hang') hanging = true;
  else if (item === 'crash') die();
  else fail(E.CANCELED);
}

function handleOption(args) {
  // OPTION name[=value] | OPTION name value; a leading "--" is dropped (libassuan std_handler_option).
  const m = /^(?:--)?([^\s=]+)\s*(?:=\s*(.*)|\s+(.*))?$/.exec(args.trim());
  if (!m) return fail(E.SYNTAX);
  if (args.includes('=') && (m[2] ?? '') === '') return fail(E.SYNTAX);
  if (!KNOWN_OPTIONS.has(m[1])) return fail(E.UNKNOWN_OPTION);
  ok();
}

function handleGetinfo(args) {
  switch (args.trim()) {
    case 'flavor':
      write('D scripted');
      return ok();
    case 'version':
      write('D 1.2.1');
      return ok();
    case 'pid':
      write(`D ${process.pid}`);
      return ok();
    case 'ttyinfo':
      write(`D - - - - ${process.getuid?.() ?? 0}/${process.getgid?.() ?? 0} -`);
      return ok();
    default:
      return fail(E.PARAMETER);
  }
}

function handleLine(lineBuf) {
  const line = lineBuf.toString('utf8');
  if (line === '' || line.startsWith('#')) return;
  if (/^\s/.test(line)) return fail(E.SYNTAX);
  const m = /^(\S+)(?:[ \t]+(.*))?$/.exec(line);
  const cmd = (m?.[1] ?? '').toUpperCase();
  const args = m?.[2] ?? '';
  const extra = TEXT_COMMANDS.has(cmd) ? { text: percentDecode(args).toString('utf8') } : {};
  log(cmd, args, extra);
  if (hanging) return; // a real pinentry is blocked in its dialog and reads nothing
  if (SILENT_OK.has(cmd)) return ok();
  switch (cmd) {
    case 'OPTION':
      return handleOption(args);
    case 'GETINFO':
      return handleGetinfo(args);
    case 'GETPIN':
      return handleGetpin();
    case 'CONFIRM':
    case 'MESSAGE':
      return handleConfirm();
    case 'RESET':
      return ok();
    case 'BYE':
      ok('closing connection');
      process.stdout.end(() => process.exit(0));
      return;
    default:
      return fail(E.UNKNOWN_CMD);
  }
}

log('#spawn', process.argv.slice(2).join(' '), {
  env: Object.fromEntries(
    LOGGED_ENV.filter((k) => k in process.env).map((k) => [k, process.env[k]]),
  ),
});
write('OK Pleased to meet you');

let pending = Buffer.alloc(0);
process.stdin.on('data', (chunk) => {
  pending = Buffer.concat([pending, chunk]);
  for (;;) {
    const nl = pending.indexOf(0x0a);
    if (nl < 0) break;
    let line = pending.subarray(0, nl);
    pending = pending.subarray(nl + 1);
    if (line.length > MAX_LINE - 1) {
      fail(E.LINE_TOO_LONG);
      continue;
    }
    if (line.length && line[line.length - 1] === 0x0d) line = line.subarray(0, -1);
    handleLine(line);
  }
  if (pending.length >= MAX_LINE) {
    fail(E.LINE_TOO_LONG);
    pending = Buffer.alloc(0);
  }
});
process.stdin.on('end', () => process.exit(0));
