// Checks at-rund's lexicons (lexicons/*.json) with the official @atproto/lexicon validator, and
// optionally JSON files against them.
//
//   node tests/lexicons/validate.mjs                       # only the documents
//   node tests/lexicons/validate.mjs record:dev.atrund.runner=runner.json \
//                                    output:dev.atrund.describeRunner=describe.json
//
// record:<nsid>=<file>  the file is a record of that collection (Lexicons#assertValidRecord;
//                       it must carry "$type": "<nsid>")
// output:<nsid>=<file>  the file is the JSON output of that XRPC method (assertValidXrpcOutput)
//
// @atproto/lexicon comes from tests/atproto-net/node_modules (npm ci there first). Each document
// is parsed with parseLexiconDoc (Lexicons#add itself checks nothing), and every ref must resolve
// to a loaded definition. Prints one line per check; exits 1 on the first failure, 2 on usage.

import { createRequire } from 'node:module'
import { readFileSync, readdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

const require = createRequire(new URL('../atproto-net/package.json', import.meta.url))
let lexicon
try {
  lexicon = require('@atproto/lexicon')
} catch (e) {
  fail(`cannot load @atproto/lexicon from tests/atproto-net/node_modules (run npm ci there): ${e.message}`)
}
const { Lexicons, parseLexiconDoc, lexUserType } = lexicon

// The official com.atproto.repo.strongRef (dev.atrund.release refers to it). No JSON copy ships
// in tests/atproto-net/node_modules (the PDS has it compiled to JS only), so it is copied here.
const STRONG_REF = {
  lexicon: 1,
  id: 'com.atproto.repo.strongRef',
  description: 'A URI with a content-hash fingerprint.',
  defs: {
    main: {
      type: 'object',
      required: ['uri', 'cid'],
      properties: {
        uri: { type: 'string', format: 'at-uri' },
        cid: { type: 'string', format: 'cid' },
      },
    },
  },
}

function fail(msg, code = 1) {
  console.error(`FAIL ${msg}`)
  process.exit(code)
}

function readJson(path, what) {
  let text
  try {
    text = readFileSync(path, 'utf8')
  } catch (e) {
    fail(`${what}: cannot read ${path}: ${e.message}`)
  }
  try {
    return JSON.parse(text)
  } catch (e) {
    fail(`${what}: ${path} is not JSON: ${e.message}`)
  }
}

function zodMessage(e) {
  if (Array.isArray(e?.issues)) {
    return e.issues.map((i) => `${i.path.length ? `${i.path.join('.')}: ` : ''}${i.message}`).join('; ')
  }
  return e?.message ?? String(e)
}

// Every { type: 'ref', ref } and { type: 'union', refs } under `node` (refs already made absolute
// by Lexicons#add), with the JSON path it sits at.
function* refsIn(node, path) {
  if (Array.isArray(node)) {
    for (let i = 0; i < node.length; i++) yield* refsIn(node[i], `${path}/${i}`)
    return
  }
  if (!node || typeof node !== 'object') return
  if (node.type === 'ref' && typeof node.ref === 'string') yield [node.ref, path]
  if (node.type === 'union' && Array.isArray(node.refs)) {
    for (const r of node.refs) if (typeof r === 'string') yield [r, path]
  }
  for (const [k, v] of Object.entries(node)) {
    if (v && typeof v === 'object') yield* refsIn(v, `${path}/${k}`)
  }
}

// 1. The documents.
const dir = fileURLToPath(new URL('../../lexicons/', import.meta.url))
const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort()
const lexicons = new Lexicons()
const fileOf = new Map()
for (const f of files) {
  const where = `lexicons/${f}`
  const doc = readJson(`${dir}${f}`, where)
  try {
    parseLexiconDoc(doc)
  } catch (e) {
    // The defs are checked by a custom zod type, whose issues lose the def's name: find it.
    // (lexUserType throws from inside its check, so safeParse would not catch it.)
    for (const [name, def] of Object.entries(doc?.defs ?? {})) {
      try {
        lexUserType.parse(def)
      } catch (e2) {
        fail(`${where}: not a valid lexicon document: in defs.${name}: ${zodMessage(e2)}`)
      }
    }
    fail(`${where}: not a valid lexicon document: ${zodMessage(e)}`)
  }
  if (`${doc.id}.json` !== f) fail(`${where}: id is ${doc.id}, expected the file to be named ${doc.id}.json`)
  try {
    lexicons.add(doc)
  } catch (e) {
    fail(`${where}: ${e.message}`)
  }
  fileOf.set(doc.id, where)
}
const extra = []
if (!lexicons.get(STRONG_REF.id)) {
  parseLexiconDoc(STRONG_REF)
  lexicons.add(structuredClone(STRONG_REF))
  extra.push(STRONG_REF.id)
}
for (const doc of lexicons) {
  const where = fileOf.get(doc.id) ?? `(built in) ${doc.id}`
  for (const [ref, path] of refsIn(doc.defs, '#/defs')) {
    if (!lexicons.getDef(ref)) fail(`${where}: unresolved ref ${ref.replace(/^lex:/, '')} at ${path}`)
  }
}
console.log(`ok ${files.length} lexicon documents in lexicons/ (plus ${extra.length ? extra.join(', ') : 'nothing'} built in); all refs resolve`)

// 2. The files named on the command line.
const KINDS = {
  record: (nsid, value) => lexicons.assertValidRecord(nsid, value),
  output: (nsid, value) => {
    // assertValidXrpcOutput answers nothing for a method without an output schema: refuse that,
    // so a typo'd or schema-less NSID cannot pass silently.
    const def = lexicons.getDefOrThrow(nsid, ['query', 'procedure'])
    if (!def.output?.schema) throw new Error(`${nsid} declares no output schema`)
    return lexicons.assertValidXrpcOutput(nsid, value)
  },
}
for (const arg of process.argv.slice(2)) {
  const m = /^([a-z]+):([^=]+)=(.+)$/.exec(arg)
  if (!m || !KINDS[m[1]]) {
    fail(`usage: node tests/lexicons/validate.mjs [record:<nsid>=<file.json> | output:<nsid>=<file.json>]... (got '${arg}')`, 2)
  }
  const [, kind, nsid, file] = m
  const value = readJson(file, `${kind} ${nsid}`)
  try {
    KINDS[kind](nsid, value)
  } catch (e) {
    fail(`${kind} ${nsid} (${file}): ${e.message}`)
  }
  console.log(`ok ${kind} ${nsid} (${file})`)
}
