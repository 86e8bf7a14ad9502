#!/usr/bin/env node
// Enforces the import rules of the layout (README, Development), which keep the trust
// boundaries visible in the code:
//   - protocol/ imports nothing of ours outside protocol/, and nothing that opens sockets or
//     files or spawns processes (it works on values and streams handed to it);
//   - server/ never imports workstation/ (nothing on a server can reach the keystore);
//   - workstation/ never imports server/;
//   - system/ (what both ends share: unix sockets, peer processes, the user-facing error types)
//     imports neither of them;
//   - nothing below cli/ imports cli/: the command line is the top layer, so the rules read
//     top-down.
// Type-only imports count too: a type that crosses the boundary drags its module's assumptions.
// Usage: node scripts/check-imports.mjs [ROOT]   (prints `file:line: message`, exits 1 on any)

import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { dirname, join, relative, resolve, sep } from 'node:path';
import ts from 'typescript';

const root = resolve(process.argv[2] ?? join(dirname(new URL(import.meta.url).pathname), '..'));
const SOURCE = /\.(ts|mts|cts|tsx|js|mjs|cjs)$/;

const PROTOCOL_FORBIDDEN_MODULES = [
  'node:net',
  'node:fs',
  'node:fs/promises',
  'node:child_process',
  'node:dgram',
  'node:http',
  'node:https',
  'node:http2',
  'node:tls',
  'node:worker_threads',
  'node:cluster',
];
const PROTOCOL_FORBIDDEN_PACKAGES = ['ws', 'ssh2', 'fastify', '@fastify'];

const builtins = new Set(builtinModules);

/** `fs` and `node:fs` are the same module; compare in the `node:` form. */
function normalizeBuiltin(spec) {
  if (spec.startsWith('node:')) return spec;
  const base = spec.split('/')[0];
  return builtins.has(spec) || builtins.has(base) ? `node:${spec}` : null;
}

function packageName(spec) {
  const parts = spec.split('/');
  return spec.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

function walk(dir, out) {
  if (!existsSync(dir)) return out;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name === 'node_modules' || e.name.startsWith('.')) continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else if (SOURCE.test(e.name) && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

function within(path, dir) {
  const r = relative(dir, path);
  return r === '' || (r !== '..' && !r.startsWith(`..${sep}`) && !r.startsWith(sep));
}

function lineAt(text, pos) {
  let line = 1;
  for (let i = text.indexOf('\n'); i !== -1 && i < pos; i = text.indexOf('\n', i + 1)) line++;
  return line;
}

function checkFile(file, area, violations) {
  const text = readFileSync(file, 'utf8');
  // preProcessFile finds static imports, `export … from`, `import()` and `require()` without
  // being fooled by comments or strings that merely look like imports.
  const info = ts.preProcessFile(text, true, true);
  const rel = relative(root, file);
  for (const ref of info.importedFiles) {
    const spec = ref.fileName;
    const line = lineAt(text, ref.pos);
    const report = (msg) => violations.push(`${rel}:${line}: ${msg}`);
    const isPath = spec.startsWith('.') || spec.startsWith('/');
    const target = isPath ? resolve(dirname(file), spec) : null;

    if (area === 'protocol') {
      if (target && !within(target, join(root, 'protocol'))) {
        report(`protocol/ must not import '${spec}' from outside protocol/`);
        continue;
      }
      if (!isPath) {
        const builtin = normalizeBuiltin(spec);
        if (builtin && PROTOCOL_FORBIDDEN_MODULES.includes(builtin)) {
          report(
            `protocol/ must not import '${spec}': it opens no sockets or files and spawns nothing`,
          );
        } else if (
          !builtin &&
          PROTOCOL_FORBIDDEN_PACKAGES.includes(packageName(spec).split('/')[0])
        ) {
          report(
            `protocol/ must not import '${spec}': transports live in workstation/ and server/`,
          );
        }
      }
    }
    if (area === 'server' && target && within(target, join(root, 'workstation'))) {
      report(`server/ must not import workstation/ ('${spec}'): servers never reach the keystore`);
    }
    if (
      area === 'system' &&
      target &&
      (within(target, join(root, 'server')) || within(target, join(root, 'workstation')))
    ) {
      report(`system/ is shared by both ends and must not import '${spec}'`);
    }
    if (area !== 'cli' && target && within(target, join(root, 'cli'))) {
      report(`${area}/ must not import cli/ ('${spec}'): the command line is the top layer`);
    }
    if (area === 'workstation' && target && within(target, join(root, 'server'))) {
      report(`workstation/ must not import server/ ('${spec}')`);
    }
  }
}

const violations = [];
for (const area of ['protocol', 'system', 'server', 'workstation']) {
  for (const file of walk(join(root, area), [])) checkFile(file, area, violations);
}
for (const v of violations) console.log(v);
if (violations.length > 0) {
  console.error(
    `check-imports: ${violations.length} import rule violation(s); see the header of scripts/check-imports.mjs`,
  );
  process.exit(1);
}
