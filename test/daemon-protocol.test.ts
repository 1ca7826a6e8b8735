/**
 * The restore daemon's control requests, as the daemon checks them off the wire: a mount may carry
 * the presigned URLs its caller made; anything malformed is refused before it reaches a mount.
 */
import { describe, expect, it } from 'vitest';
import { parseRequest } from '../src/restore/lazy/protocol.js';

const WS = '0123456789ab';

describe('daemon control protocol', () => {
  it('takes a mount with the caller\'s presigned URLs, and one without', () => {
    const url = 'https://bucket.example.com/blobs/sha256/ab?X-Amz-Signature=00';
    expect(parseRequest(JSON.stringify({ op: 'mount', workspace: WS, hydrate: false, sources: [{ layer: 0, url }, { layer: 2, url }] }))).toEqual({
      op: 'mount',
      workspace: WS,
      hydrate: false,
      sources: [
        { layer: 0, url },
        { layer: 2, url },
      ],
    });
    expect(parseRequest(JSON.stringify({ op: 'mount', workspace: WS }))).toEqual({ op: 'mount', workspace: WS, hydrate: true });
  });

  it('refuses sources that are not http(s) URLs of a layer index', () => {
    const mount = (sources: unknown): string => JSON.stringify({ op: 'mount', workspace: WS, hydrate: true, sources });
    expect(() => parseRequest(mount([{ layer: 0, url: 'file:///etc/shadow' }]))).toThrow(/not an http\(s\) URL/);
    expect(() => parseRequest(mount([{ layer: 0, url: 'http://a/b c' }]))).toThrow(/not an http\(s\) URL/);
    expect(() => parseRequest(mount([{ layer: -1, url: 'http://a/b' }]))).toThrow(/layer index/);
    expect(() => parseRequest(mount([{ layer: 1.5, url: 'http://a/b' }]))).toThrow(/layer index/);
    expect(() => parseRequest(mount({ layer: 0, url: 'http://a/b' }))).toThrow(/array/);
    expect(() => parseRequest(mount(Array.from({ length: 5000 }, () => ({ layer: 0, url: 'http://a/b' }))))).toThrow(/at most/);
  });

  it('refuses unknown operations and bad workspace ids', () => {
    expect(() => parseRequest(JSON.stringify({ op: 'exec', workspace: WS }))).toThrow(/unknown op/);
    expect(() => parseRequest(JSON.stringify({ op: 'mount', workspace: '../../etc' }))).toThrow(/bad workspace id/);
  });
});
