/**
 * Directory scans started ahead of a depth-first walk, in the order the walk will want them.
 *
 * A walk in JavaScript (a workspace's upper, where a reinstalled node_modules is a whole new
 * subtree) awaited one scanDir job per directory, and the threadpool read each directory while
 * the main thread waited: on the bench's small tree 1,600 scans were ~0.45 s of a 1.5 s walk.
 * Here the next `window` directories in walk order are scanned while the walk processes the
 * current one, so a scan is usually done when the walk gets to it.
 *
 * The order is depth-first pre-order, learnt as the walk goes: once a directory's scan is known,
 * its child directories (in the walk's order) come right after it, before its later siblings.
 * A directory the walk takes that was not predicted is scanned then; predicted ones it skips (a
 * renamed directory captured whole, an entry gone) are dropped once the walk is past them.
 * Scanning a directory early changes no rule of the capture: each file is still kept only if it
 * held still while the scan read it.
 */
import type { BytePath } from '../format/paths.js';
import type { DirScan } from '../sys/scan.js';
import { ScanFlag } from '../sys/scan.js';

interface Node {
  path: BytePath;
  scan?: Promise<DirScan>;
  next?: Node;
}

export class ScanAhead {
  /** The walk's position: nodes after it are what it will take next, in order. */
  private head: Node = { path: '' };
  private readonly byPath = new Map<BytePath, Node>();
  /** Scans started ahead and not yet taken or dropped. */
  private outstanding = 0;

  /**
   * @param start scans one directory, by its path in the layer; `early` when ahead of the walk
   *   (the caller gives those a smaller data budget: `most` of them may be held at once)
   * @param window how far ahead of the walk scans start: the next `window` directories
   * @param most scans held at once: a child directory learnt late comes before siblings already
   *   started, which then wait beyond the window
   */
  constructor(
    private readonly start: (path: BytePath, early: boolean) => Promise<DirScan>,
    private readonly window = 4,
    private readonly most = 16,
  ) {}

  /** The scan of the directory at path (begun now if it was not predicted). */
  take(path: BytePath): Promise<DirScan> {
    const node = this.byPath.get(path);
    if (!node) {
      // Not predicted (the root, or a directory made after its parent's scan): the walk is
      // here now, and what was predicted after the old position still follows.
      this.head = { path, next: this.head.next };
      const scan = this.start(path, false);
      this.pump();
      return scan;
    }
    // The walk is at node: everything before it was taken or skipped.
    for (let n = this.head.next; n && n !== node; n = n.next) {
      this.byPath.delete(n.path);
      if (n.scan) this.outstanding--;
    }
    this.byPath.delete(path);
    this.head = node;
    let scan = node.scan;
    if (scan) this.outstanding--;
    else scan = this.start(path, false);
    delete node.scan; // the walk owns it now
    this.pump();
    return scan;
  }

  /** The directory at path, just taken, holds these entries: its child directories come next. */
  children(path: BytePath, scan: DirScan): void {
    if (this.head.path !== path) return; // not the walk's current directory: no prediction
    let after = this.head;
    const rest = after.next;
    for (let i = 0; i < scan.count; i++) {
      if (!(scan.flags(i) & ScanFlag.EXISTS) || !scan.stat(i).isDirectory()) continue;
      const name = scan.name(i).toString('latin1');
      const child: Node = { path: path === '.' ? name : path + '/' + name };
      if (this.byPath.has(child.path)) continue;
      after.next = child;
      after = child;
      this.byPath.set(child.path, child);
    }
    after.next = rest;
    this.pump();
  }

  /** Start the scans of the next `window` directories, while fewer than `most` are held. */
  private pump(): void {
    let k = 0;
    for (let n = this.head.next; n && k < this.window && this.outstanding < this.most; n = n.next, k++) {
      if (n.scan) continue;
      n.scan = this.start(n.path, true);
      n.scan.catch(() => undefined); // surfaced when taken; dropped if skipped
      this.outstanding++;
    }
  }
}
