/**
 * The merged view of a layer stack: what a restore shows. Layers apply bottom to top; a layer's
 * whiteouts and opaque directories hide what the layers below hold (OCI image-spec rules), then its
 * entries replace or add. Built once from the TOCs; extract and the FUSE index both walk it.
 */
import { InvalidLayerError } from '../errors.js';
import { type BytePath, baseOf, displayPath, parentOf } from './paths.js';
import type { Toc, TocEntry } from './toc.js';

export interface ViewNode {
  path: BytePath;
  entry: TocEntry;
  /** Index of the layer the entry comes from (0 = bottom). */
  layer: number;
  /** Directory children by name. */
  children?: Map<BytePath, ViewNode>;
  /** Hard link: the node holding the file's data. */
  linkTo?: ViewNode;
}

const DEFAULT_ROOT: TocEntry = { path: '.', type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: [0, 0], size: 0, headerOffset: 0 };

export interface ViewOptions {
  /**
   * Keep whiteouts as nodes (and opaque flags on directories) instead of applying them: the view
   * of one layer as a layer, for unpacking it into an overlay lower directory.
   */
  keepWhiteouts?: boolean;
}

export function buildView(tocs: Toc[], opts: ViewOptions = {}): ViewNode {
  const root = emptyView();
  tocs.forEach((toc, layer) => applyToc(root, toc, layer, opts));
  return root;
}

/** A view with nothing in it but a default root directory. */
export function emptyView(): ViewNode {
  return { path: '.', entry: DEFAULT_ROOT, layer: -1, children: new Map() };
}

/** The node at a path of the view, if there is one. */
export function findNode(root: ViewNode, p: BytePath): ViewNode | undefined {
  if (p === '.') return root;
  let n: ViewNode | undefined = root;
  for (const part of p.split('/')) {
    n = n.children?.get(part);
    if (!n) return undefined;
  }
  return n;
}

/**
 * Apply one layer (numbered `layer` in the stack) over a view, in place: how buildView stacks
 * layers, and how a backup stacks its new layer over its parent's index without the parent's TOCs.
 */
export function applyToc(root: ViewNode, toc: Toc, layer: number, opts: ViewOptions = {}): void {
  const find = (p: BytePath): ViewNode | undefined => findNode(root, p);
  // Whiteouts and opaque markers first: they act on the layers below only.
  for (const e of toc.entries) {
    if (e.type === 'whiteout') {
      const parent = find(parentOf(e.path));
      parent?.children?.delete(baseOf(e.path));
    } else if (e.type === 'dir' && e.opaque) {
      const n = find(e.path);
      if (n?.children) n.children = new Map();
    }
  }
  for (const e of toc.entries) {
    if (e.type === 'whiteout' && !opts.keepWhiteouts) continue;
    if (e.path === '.') {
      root.entry = e;
      root.layer = layer;
      continue;
    }
    const parent = find(parentOf(e.path));
    if (!parent || !parent.children) {
      throw new InvalidLayerError(`layer ${layer} has ${displayPath(e.path)} but no directory above it`);
    }
    const name = baseOf(e.path);
    const old = parent.children.get(name);
    const node: ViewNode = { path: e.path, entry: e, layer };
    if (e.type === 'dir') node.children = old?.children && !e.opaque ? old.children : new Map();
    if (e.type === 'hardlink') {
      let target = find(e.linkTarget!);
      if (target?.linkTo) target = target.linkTo;
      if (!target || target.entry.type !== 'file') {
        throw new InvalidLayerError(`hard link ${displayPath(e.path)} points to ${displayPath(e.linkTarget!)}, which is not a regular file in the layers`);
      }
      if (target === old) throw new InvalidLayerError(`hard link ${displayPath(e.path)} points to itself`);
      node.linkTo = target;
    }
    parent.children.set(name, node);
  }
}

/** Every node, parents before children, children in byte order. */
export function* walkView(root: ViewNode): Generator<ViewNode> {
  const stack: ViewNode[] = [root];
  while (stack.length > 0) {
    const n = stack.pop()!;
    yield n;
    if (n.children) {
      const kids = [...n.children.values()].sort((a, b) => (a.path < b.path ? 1 : a.path > b.path ? -1 : 0));
      stack.push(...kids);
    }
  }
}

/** The root directory's entry of a stack of layers (bottom first): the topmost layer's that has one. */
export function topRoot(tocs: Toc[]): TocEntry | undefined {
  for (let i = tocs.length - 1; i >= 0; i--) {
    const e = tocs[i]!.entries.find((x) => x.path === '.');
    if (e) return e;
  }
  return undefined;
}
