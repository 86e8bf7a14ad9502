// The page's static files: plain HTML, CSS and ES modules under workstation/web/assets/, read
// once at start and served from memory by name, so no request path ever reaches the file system.
// The directory is found by walking up from this module: the source tree, dist/ (the package
// ships workstation/web/assets) and the tests' build cache all have it above them.

import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface Asset {
  body: Buffer;
  type: string;
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.svg': 'image/svg+xml',
};

const RELATIVE = path.join('workstation', 'web', 'assets');

export function assetsDir(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const here = path.join(dir, 'assets');
    if (existsSync(path.join(here, 'index.html'))) return here;
    const below = path.join(dir, RELATIVE);
    if (existsSync(path.join(below, 'index.html'))) return below;
    const up = path.dirname(dir);
    if (up === dir) throw new Error('the approval page files (workstation/web/assets) are missing');
    dir = up;
  }
}

/** Every asset by its URL path (`/assets/app.js`; the page itself is `/`). */
export function loadAssets(dir = assetsDir()): Map<string, Asset> {
  const out = new Map<string, Asset>();
  const walk = (d: string, prefix: string) => {
    for (const name of readdirSync(d)) {
      const p = path.join(d, name);
      if (statSync(p).isDirectory()) walk(p, `${prefix}${name}/`);
      else {
        const type = TYPES[path.extname(name)];
        if (type) out.set(`${prefix}${name}`, { body: readFileSync(p), type });
      }
    }
  };
  walk(dir, '/assets/');
  const index = out.get('/assets/index.html');
  if (index) out.set('/', index);
  out.delete('/assets/index.html');
  return out;
}
