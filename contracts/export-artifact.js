#!/usr/bin/env node
// Writes the InferenceHub ABI + bytecode from forge's build output (out/) into the Python package:
//   node export-artifact.js          -> writes ../node/chain/artifacts/InferenceHub.json
//   node export-artifact.js --check  -> exits 1 when the committed artifact differs from out/
// Run `forge build --offline` first (see the Makefile's `contracts` target).
'use strict';
const fs = require('fs');
const path = require('path');

const src = path.join(__dirname, 'out', 'InferenceHub.sol', 'InferenceHub.json');
const dst = path.join(__dirname, '..', 'node', 'chain', 'artifacts', 'InferenceHub.json');

if (!fs.existsSync(src)) {
  console.error(`export-artifact: ${src} missing; run \`forge build --offline\` in contracts/ first`);
  process.exit(2);
}
const built = JSON.parse(fs.readFileSync(src, 'utf8'));
// The hub delegates its dispute paths to HubDisputes (fallback + delegatecall): callers see one
// contract, so the exported ABI is the hub's plus the module's entries the hub lacks.
const modSrc = path.join(__dirname, 'out', 'HubDisputes.sol', 'HubDisputes.json');
const mod = JSON.parse(fs.readFileSync(modSrc, 'utf8'));
const key = (e) => `${e.type}:${e.name || ''}:${(e.inputs || []).map((i) => i.type).join(',')}`;
const seen = new Set(built.abi.map(key));
const abi = built.abi.filter((e) => e.type !== 'fallback');
for (const e of mod.abi) {
  if (!seen.has(key(e)) && e.type === 'function') abi.push(e);
}
const artifact = {
  contractName: 'InferenceHub',
  abi,
  bytecode: built.bytecode.object,
  deployedBytecode: built.deployedBytecode.object,
};
const text = JSON.stringify(artifact, null, 2) + '\n';

if (process.argv.includes('--check')) {
  const current = fs.existsSync(dst) ? fs.readFileSync(dst, 'utf8') : '';
  if (current !== text) {
    console.error('export-artifact: node/chain/artifacts/InferenceHub.json is stale; run `make contracts` and commit it');
    process.exit(1);
  }
  console.log('export-artifact: node/chain/artifacts/InferenceHub.json is up to date');
} else {
  fs.mkdirSync(path.dirname(dst), { recursive: true });
  fs.writeFileSync(dst, text);
  console.log(`export-artifact: wrote ${path.relative(process.cwd(), dst)}`);
}
