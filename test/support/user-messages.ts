// Collects the sentences keytether prints to a user, straight from the TypeScript sources, for
// docs/troubleshooting.md's completeness test. A static scan (the compiler's parser, no type
// checking) of:
//   - `new UserError(…)` / `new UsageError(…)` first arguments in cli/, workstation/, server/,
//     system/ (what `keytether <command>: …` prints);
//   - `new GpgError(ErrorCode.X, '…')` texts in server/ (what the facade answers gpg with);
//   - `sentence: (why) => …` in a control answer's reader (thrown as a UserError by it);
//   - the relay's refusals: `refuse(ws, log, code, '…', …)` and `refusal(code, '…', …)` reasons
//     (its log) and the REFUSALS /
//     CLOSE_TEXT tables that turn its close codes into sentences for `keytether connect` and
//     `keytether agent --relay`.
// A literal string gives its text; a template literal or a `+` concatenation gives its literal
// parts with every `${…}` (or other expression) shown as `…`. An argument with no literal part
// (a message passed on from elsewhere, like `e.message`) is not a sentence of its own and is
// skipped.

import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';

export const PLACEHOLDER = '…';

export interface UserMessage {
  /** The sentence, whitespace collapsed, with `…` for each variable part. */
  text: string;
  /** `file:line` of each place it is made (relative to the repository). */
  sites: string[];
}

const SCANNED_DIRS = ['cli', 'workstation', 'server', 'system'];
const TABLES = new Set(['REFUSALS', 'CLOSE_TEXT']);

function tsFiles(dir: string, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) tsFiles(p, out);
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** The literal text of an expression, `…` for whatever is computed; undefined if none. */
function textOf(node: ts.Expression): string {
  if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)) return node.text;
  if (ts.isParenthesizedExpression(node)) return textOf(node.expression);
  if (ts.isTemplateExpression(node)) {
    return node.head.text + node.templateSpans.map((s) => PLACEHOLDER + s.literal.text).join('');
  }
  if (ts.isBinaryExpression(node) && node.operatorToken.kind === ts.SyntaxKind.PlusToken) {
    return textOf(node.left) + textOf(node.right);
  }
  return PLACEHOLDER;
}

export function normalise(text: string): string {
  return text
    .replace(/\s+/g, ' ')
    .replace(/…(\s*…)+/g, PLACEHOLDER)
    .trim();
}

/** Worth documenting: some words, not just a placeholder and punctuation. */
const hasWords = (text: string) => text.replace(/…/g, '').replace(/[^A-Za-z]/g, '').length >= 6;

export function collectUserMessages(repoRoot: string): UserMessage[] {
  const found = new Map<string, UserMessage>();
  const add = (raw: string, sf: ts.SourceFile, node: ts.Node, file: string) => {
    const text = normalise(raw);
    if (!hasWords(text)) return;
    const line = sf.getLineAndCharacterOfPosition(node.getStart(sf)).line + 1;
    const site = `${path.relative(repoRoot, file)}:${line}`;
    const m = found.get(text);
    if (m) m.sites.push(site);
    else found.set(text, { text, sites: [site] });
  };
  for (const dir of SCANNED_DIRS) {
    for (const file of tsFiles(path.join(repoRoot, dir))) {
      const sf = ts.createSourceFile(
        file,
        readFileSync(file, 'utf8'),
        ts.ScriptTarget.Latest,
        true,
      );
      const inServer = file.startsWith(path.join(repoRoot, 'server') + path.sep);
      const visit = (node: ts.Node): void => {
        if (ts.isNewExpression(node) && ts.isIdentifier(node.expression)) {
          const name = node.expression.text;
          const args = node.arguments ?? [];
          const message =
            name === 'UserError' || name === 'UsageError'
              ? args[0]
              : name === 'GpgError' && inServer
                ? args[1]
                : undefined;
          // `cond ? 'one sentence' : 'another'` makes two sentences.
          const alternatives =
            message && ts.isConditionalExpression(message)
              ? [message.whenTrue, message.whenFalse]
              : message
                ? [message]
                : [];
          for (const m of alternatives) add(textOf(m), sf, node, file);
        }
        if (
          ts.isCallExpression(node) &&
          ts.isPropertyAccessExpression(node.expression) &&
          node.expression.name.text === 'refuse' &&
          node.arguments[3]
        ) {
          const reason = node.arguments[3];
          if (ts.isStringLiteral(reason)) add(reason.text, sf, node, file);
        }
        // refusal(code, '…', metric): a refusal decided in one place and sent to either kind of
        // facade (on this relay instance or, with --redis, on another).
        if (
          ts.isCallExpression(node) &&
          ts.isIdentifier(node.expression) &&
          node.expression.text === 'refusal' &&
          node.arguments[1] &&
          ts.isStringLiteral(node.arguments[1])
        ) {
          add(node.arguments[1].text, sf, node, file);
        }
        // `sentence: (why) => `…``: a control answer's reader (workstation/control/connection.ts)
        // throws it as a UserError when that answer cannot be read.
        if (
          ts.isPropertyAssignment(node) &&
          ts.isIdentifier(node.name) &&
          node.name.text === 'sentence' &&
          ts.isArrowFunction(node.initializer) &&
          !ts.isBlock(node.initializer.body)
        ) {
          add(textOf(node.initializer.body), sf, node, file);
        }
        if (
          ts.isVariableDeclaration(node) &&
          ts.isIdentifier(node.name) &&
          TABLES.has(node.name.text) &&
          node.initializer &&
          ts.isObjectLiteralExpression(node.initializer)
        ) {
          for (const p of node.initializer.properties) {
            if (!ts.isPropertyAssignment(p)) continue;
            let v = p.initializer;
            if (ts.isObjectLiteralExpression(v)) {
              const t = v.properties.find(
                (q): q is ts.PropertyAssignment =>
                  ts.isPropertyAssignment(q) && ts.isIdentifier(q.name) && q.name.text === 'text',
              );
              if (!t) continue;
              v = t.initializer;
            }
            add(textOf(v), sf, p, file);
          }
        }
        ts.forEachChild(node, visit);
      };
      visit(sf);
    }
  }
  return [...found.values()].sort((a, b) => a.sites[0]!.localeCompare(b.sites[0]!));
}
