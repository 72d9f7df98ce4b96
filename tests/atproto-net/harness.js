#!/usr/bin/env node
// A real PLC directory + PDS on 127.0.0.1 for at-rund's integration tests.
//
// Starts @did-plc/server (in-memory op store) and @atproto/pds (SQLite + disk blobstore in a temp
// dir), both bound to 127.0.0.1 only, on free ports. Creates three accounts:
//   alice.test  did:plc
//   carol.test  did:web:localhost%3A<port>, its did.json served by a small loopback HTTP server
//               (migration-style flow: service-auth JWT -> deactivated account -> DID doc gets the
//               PDS's signing key -> activateAccount)
//   tomb.test   did:plc, then tombstoned in the PLC with the PDS's rotation key
// Prints exactly one stdout line `ATPROTO_TEST_NETWORK_READY {json}`; everything else goes to
// stderr. Exits (removing its temp dir) on stdin EOF, SIGTERM or SIGINT.
//
// Environment (all optional): HARNESS_LOG=1 enables the servers' own logs (to stderr);
// BLOB_UPLOAD_LIMIT (bytes, default 50 MiB); RATE_LIMITS=1 turns PDS rate limits on;
// EXIT_ON_STDIN_EOF=0 keeps running after stdin closes (then stop it with SIGTERM).
'use strict'

const net = require('node:net')
const http = require('node:http')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const crypto = require('node:crypto')

const LOOPBACK = '127.0.0.1'
const READY_PREFIX = 'ATPROTO_TEST_NETWORK_READY '
const started = Date.now()

const log = (...args) => process.stderr.write(`[atproto-net] ${args.join(' ')}\n`)

// Keep stdout for the ready line only: the servers log through pino, which writes straight to
// fd 1, so either silence it or send it to stderr before the modules are loaded.
if (process.env.HARNESS_LOG === '1') {
  process.env.LOG_ENABLED = 'true'
  process.env.LOG_DESTINATION = '/dev/stderr'
} else {
  process.env.LOG_ENABLED = 'false'
}
const stdoutWrite = process.stdout.write.bind(process.stdout)
process.stdout.write = process.stderr.write.bind(process.stderr)

// Everything here talks to loopback only; a proxy from the environment must not capture it
// (axios, used by @did-plc/lib's client, honours these variables).
for (const k of ['HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy', 'ALL_PROXY', 'all_proxy']) {
  delete process.env[k]
}

// Both servers call `app.listen(port)`, which binds every interface. Patch at the `net` level
// (the PLC server bundles its own express) so that a listen without a host gets 127.0.0.1.
const origListen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  const a0 = args[0]
  if (args.length === 0 || typeof a0 === 'function') {
    args.unshift(0, LOOPBACK)
  } else if (typeof a0 === 'number' || (typeof a0 === 'string' && /^\d+$/.test(a0))) {
    if (typeof args[1] !== 'string') args.splice(1, 0, LOOPBACK)
  } else if (a0 && typeof a0 === 'object' && a0.path === undefined && a0.fd === undefined &&
    a0.handle === undefined && a0._handle === undefined && !a0.host) {
    args[0] = { ...a0, host: LOOPBACK }
  }
  return origListen.apply(this, args)
}

const { PDS, envToCfg, envToSecrets } = require('@atproto/pds')
const plcServer = require('@did-plc/server')
const plcLib = require('@did-plc/lib')
const { Secp256k1Keypair } = require('@atproto/crypto')
const { createServiceJwt } = require('@atproto/xrpc-server')

const freePort = () =>
  new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject)
    origListen.call(s, 0, LOOPBACK, () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })

async function xrpc (base, nsid, { body, token, method } = {}) {
  const headers = {}
  if (token) headers.authorization = `Bearer ${token}`
  if (body !== undefined) headers['content-type'] = 'application/json'
  const res = await fetch(`${base}/xrpc/${nsid}`, {
    method: method ?? (body !== undefined ? 'POST' : 'GET'),
    headers,
    body: body !== undefined ? JSON.stringify(body) : undefined
  })
  const text = await res.text()
  let json
  try { json = text ? JSON.parse(text) : {} } catch { json = { raw: text } }
  if (!res.ok) {
    throw new Error(`${nsid} -> HTTP ${res.status}: ${text}`)
  }
  return json
}

const state = { plc: null, pds: null, didWebServer: null, tmp: null, stopping: false }

async function shutdown (code) {
  if (state.stopping) return
  state.stopping = true
  const force = setTimeout(() => {
    removeTmp()
    process.exit(code)
  }, 5000)
  force.unref()
  try { await state.pds?.destroy() } catch (e) { log('pds destroy:', e.message) }
  try { await state.plc?.destroy() } catch (e) { log('plc destroy:', e.message) }
  try { state.didWebServer?.closeAllConnections?.(); state.didWebServer?.close() } catch {}
  removeTmp()
  process.exit(code)
}

function removeTmp () {
  if (state.tmp) {
    try { fs.rmSync(state.tmp, { recursive: true, force: true }) } catch {}
    state.tmp = null
  }
}

process.on('SIGTERM', () => shutdown(0))
process.on('SIGINT', () => shutdown(0))
// The test runner keeps our stdin pipe open while it lives; when it exits (even by SIGKILL) the
// pipe closes and we go too. EXIT_ON_STDIN_EOF=0 disables this for manual runs (`node harness.js
// < /dev/null &`).
if (process.env.EXIT_ON_STDIN_EOF !== '0') {
  process.stdin.on('end', () => shutdown(0))
  process.stdin.on('error', () => shutdown(0))
  process.stdin.resume()
}

async function createPlcAccount (pdsUrl, handle, password) {
  const email = `${handle.replace(/\./g, '-')}@example.com`
  const out = await xrpc(pdsUrl, 'com.atproto.server.createAccount', {
    body: { handle, email, password }
  })
  return { did: out.did, handle: out.handle, password, accessJwt: out.accessJwt }
}

// did:web account: the DID's controller (us) holds `controllerKey`; the doc starts with that key
// so the PDS can verify the service-auth JWT, then switches to the key the PDS recommends.
async function createDidWebAccount (pdsUrl, serviceDid, handle, password) {
  const controllerKey = await Secp256k1Keypair.create({ exportable: true })
  let doc = null
  let override = null
  const applyOverride = (d, o) => {
    const copy = JSON.parse(JSON.stringify(d))
    if (o.pds) copy.service[0].serviceEndpoint = o.pds
    if (o.atprotoKey) copy.verificationMethod[0].publicKeyMultibase = o.atprotoKey
    return copy
  }
  let docFetches = 0
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/.well-known/did.json' && doc) {
      docFetches += 1
      res.writeHead(200, { 'content-type': 'application/did+ld+json' })
      res.end(JSON.stringify(override ? applyOverride(doc, override) : doc))
    } else if (req.method === 'GET' && req.url === '/__test/did-doc-fetches') {
      // How often the doc was served: tests count a runner's identity look-ups with it.
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ fetches: docFetches }))
    } else if (req.method === 'PUT' && req.url === '/__test/did-doc-override') {
      // Tests play the domain owner: point the doc at another PDS URL (a tampering proxy) or
      // another #atproto key, then reset with `{}`. Only the served doc changes.
      let body = ''
      req.on('data', (c) => { body += c })
      req.on('end', () => {
        try {
          const o = JSON.parse(body || '{}')
          override = (o.pds || o.atprotoKey) ? o : null
          res.writeHead(204)
          res.end()
        } catch (e) {
          res.writeHead(400, { 'content-type': 'text/plain' })
          res.end(String(e))
        }
      })
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' })
      res.end('not found')
    }
  })
  state.didWebServer = server
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    origListen.call(server, 0, LOOPBACK, resolve)
  })
  const port = server.address().port
  const did = `did:web:localhost%3A${port}`
  const makeDoc = (didKey) => ({
    '@context': [
      'https://www.w3.org/ns/did/v1',
      'https://w3id.org/security/multikey/v1',
      'https://w3id.org/security/suites/secp256k1-2019/v1'
    ],
    id: did,
    alsoKnownAs: [`at://${handle}`],
    verificationMethod: [{
      id: `${did}#atproto`,
      type: 'Multikey',
      controller: did,
      publicKeyMultibase: didKey.replace(/^did:key:/, '')
    }],
    service: [{ id: '#atproto_pds', type: 'AtprotoPersonalDataServer', serviceEndpoint: pdsUrl }]
  })
  doc = makeDoc(controllerKey.did())

  const jwt = await createServiceJwt({
    iss: did,
    aud: serviceDid,
    lxm: 'com.atproto.server.createAccount',
    keypair: controllerKey
  })
  const email = `${handle.replace(/\./g, '-')}@example.com`
  const created = await xrpc(pdsUrl, 'com.atproto.server.createAccount', {
    body: { handle, email, password, did },
    token: jwt
  })
  const creds = await xrpc(pdsUrl, 'com.atproto.identity.getRecommendedDidCredentials', {
    token: created.accessJwt
  })
  const signingKey = creds?.verificationMethods?.atproto
  if (typeof signingKey !== 'string') {
    throw new Error(`getRecommendedDidCredentials returned no atproto key: ${JSON.stringify(creds)}`)
  }
  doc = makeDoc(signingKey)
  await xrpc(pdsUrl, 'com.atproto.server.activateAccount', { token: created.accessJwt, method: 'POST' })
  // A fresh session after activation, so the token carries no "deactivated" state.
  const session = await xrpc(pdsUrl, 'com.atproto.server.createSession', {
    body: { identifier: handle, password }
  })
  return {
    account: { did, handle, password, accessJwt: session.accessJwt },
    didDocUrl: `http://localhost:${port}/.well-known/did.json`
  }
}

// @did-plc/server 0.0.1 answers 404 "DID not available" for a tombstoned DID; plc.directory and
// the current spec answer 410. Put a front handler before the PLC's express app so that
// `GET /<did>` and `GET /<did>/data` of a DID whose current op is a tombstone give 410, like the
// real directory; every other request goes to the PLC unchanged.
function answerGoneForTombstones (plc) {
  const inner = plc.app
  const front = (req, res) => {
    const m = req.method === 'GET' && /^\/(did:plc:[a-z2-7]{24})(\/data)?\/?(\?.*)?$/.exec(req.url)
    if (!m) return inner(req, res)
    plc.ctx.db.opsForDid(m[1]).then((ops) => {
      const last = ops.at(-1)
      if (last && last.type === 'plc_tombstone') {
        res.writeHead(410, { 'content-type': 'application/json; charset=utf-8' })
        res.end(JSON.stringify({ message: `DID not available: ${m[1]}` }))
      } else {
        inner(req, res)
      }
    }, () => inner(req, res))
  }
  front.listen = (...args) => http.createServer(front).listen(...args)
  plc.app = front
}

async function main () {
  state.tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'atp-net-'))
  const dataDir = path.join(state.tmp, 'data')
  const blobDir = path.join(state.tmp, 'blobs')
  fs.mkdirSync(dataDir)
  fs.mkdirSync(blobDir)

  // PLC directory, in-memory.
  // Port 0: the OS picks; nothing needs the PLC's URL before it listens.
  state.plc = plcServer.PlcServer.create({ db: plcServer.Database.mock(), port: 0 })
  answerGoneForTombstones(state.plc)
  const plcServerHandle = await state.plc.start()
  const plcUrl = `http://${LOOPBACK}:${plcServerHandle.address().port}`
  log(`plc listening on ${plcUrl}`)

  // PDS. Its public URL is derived from hostname 'localhost' + port before it listens, so the
  // port is found first (bind :0, close, reuse: a tiny race with other processes, never seen).
  const pdsPort = await freePort()
  const rotationKey = await Secp256k1Keypair.create({ exportable: true })
  const rotationKeyHex = Buffer.from(await rotationKey.export()).toString('hex')
  const recoveryKey = await Secp256k1Keypair.create()
  const env = {
    port: pdsPort,
    hostname: 'localhost',
    devMode: true,
    inviteRequired: false,
    dataDirectory: dataDir,
    blobstoreDiskLocation: blobDir,
    blobUploadLimit: Number(process.env.BLOB_UPLOAD_LIMIT || 50 * 1024 * 1024),
    serviceHandleDomains: ['.test'],
    didPlcUrl: plcUrl,
    recoveryDidKey: recoveryKey.did(),
    rateLimitsEnabled: process.env.RATE_LIMITS === '1',
    disableSsrfProtection: true,
    crawlers: [],
    jwtSecret: crypto.randomBytes(16).toString('hex'),
    adminPassword: crypto.randomBytes(16).toString('hex'),
    plcRotationKeyK256PrivateKeyHex: rotationKeyHex
  }
  const cfg = envToCfg(env)
  const secrets = envToSecrets(env)
  state.pds = await PDS.create(cfg, secrets)
  await state.pds.start()
  const pdsUrl = cfg.service.publicUrl
  log(`pds listening on ${pdsUrl} (service did ${cfg.service.did})`)

  const password = 'hunter2-password'
  const alice = await createPlcAccount(pdsUrl, 'alice.test', password)
  const tomb = await createPlcAccount(pdsUrl, 'tomb.test', password)
  const carol = await createDidWebAccount(pdsUrl, cfg.service.did, 'carol.test', password)

  // Tombstone tomb.test's DID with the PDS's PLC rotation key, which this harness generated.
  const signer = await Secp256k1Keypair.import(rotationKeyHex)
  const plcClient = new plcLib.Client(plcUrl)
  await plcClient.tombstone(tomb.did, signer)
  const check = await fetch(`${plcUrl}/${tomb.did}`)
  if (check.status !== 410) {
    throw new Error(`tombstoned DID ${tomb.did} resolves with HTTP ${check.status}, expected 410`)
  }

  const ready = {
    plcUrl,
    pdsUrl,
    pdsServiceDid: cfg.service.did,
    alice,
    carol: carol.account,
    carolDidDocUrl: carol.didDocUrl,
    tomb,
    tombstonedDid: tomb.did,
    startupMs: Date.now() - started
  }
  stdoutWrite(READY_PREFIX + JSON.stringify(ready) + '\n')
  log(`ready in ${ready.startupMs} ms`)
}

main().catch((err) => {
  log('failed to start:', err && err.stack ? err.stack : String(err))
  shutdown(1)
})
