/**
 * The store keys a backup's layers occupy: `blobs/sha256/<hex>` for a layer stored under its
 * digest (file stores), or its staging key and the locator naming it (a layer streamed to a
 * remote store stays where it was uploaded: docs/format.md, "Manifest").
 */
export function layerKeysOf(info: { layers: Array<{ digest: string; key?: string | undefined }> }): string[] {
  return info.layers.flatMap((l) => (l.key ? [l.key, `blobs/at/${l.digest.slice(7)}`] : [`blobs/sha256/${l.digest.slice(7)}`])).sort();
}
