// The page's only way to make elements: text goes in through textContent, never as markup, so
// whatever a server put in a commit message or a host name stays text.

/** el('dd', { class: 'x' }, 'text', child) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    node.append(
      typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c,
    );
  }
  return node;
}

/** A provenance badge: verified (proven by the holder), reported (the server's claim), blind. */
export function label(kind) {
  return el('span', { class: `label ${kind}` }, kind);
}
