// A verifier outside Python: rebuild each document's canonical bytes and CID the way any JavaScript
// client would, with the RFC 8785 reference implementation (npm `canonicalize`) and `multiformats`.
//
// stdin:  [{"name": "...", "bytes": "<base64 of the document as stored>"}, ...]
// stdout: [{"name": "...", "cid": "bafkrei...", "same_bytes": true|false, "rebuilt": "<base64>"}, ...]
//
// The document is parsed as JSON (numbers become IEEE doubles, as everywhere in JavaScript), encoded
// again with JCS, and hashed as one raw block: CIDv1(raw 0x55, sha2-256), base32. A version-3
// document must come back byte for byte, so its CID equals the one Python (and the chain) computed.
import { readFileSync } from 'node:fs';
import canonicalize from 'canonicalize';
import { CID } from 'multiformats/cid';
import * as raw from 'multiformats/codecs/raw';
import { sha256 } from 'multiformats/hashes/sha2';

const utf8 = new TextDecoder('utf-8', { fatal: true });
const docs = JSON.parse(readFileSync(0, 'utf8'));
const out = [];
for (const { name, bytes } of docs) {
  const stored = Buffer.from(bytes, 'base64');
  const rebuilt = Buffer.from(canonicalize(JSON.parse(utf8.decode(stored))), 'utf8');
  const cid = CID.create(1, raw.code, await sha256.digest(rebuilt)).toString();
  out.push({ name, cid, same_bytes: rebuilt.equals(stored), rebuilt: rebuilt.toString('base64') });
}
process.stdout.write(JSON.stringify(out));
