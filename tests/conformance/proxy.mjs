#!/usr/bin/env node
// A loopback HTTP proxy in front of an MCP Streamable HTTP endpoint (Node stdlib only).
//
//   node proxy.mjs --target http://127.0.0.1:18082/mcp [--listen 0] [--token-file F] [--prefix conf] [--log F.jsonl]
//
// What it does, and nothing else:
// 1. Adds `Authorization: Bearer <token>` (token from --token-file or $CONF_TOKEN) to every request
//    when a token is given. Every other request header (Host, Origin, Accept, Content-Type,
//    Mcp-Session-Id, MCP-Protocol-Version, Last-Event-ID, ...) is passed through unchanged, and every
//    response header (Mcp-Session-Id, Content-Type, ...) comes back unchanged; only hop-by-hop
//    headers (Connection, Keep-Alive, Transfer-Encoding, ...) are left to each hop, and
//    Content-Length is recomputed where a body was rewritten.
// 2. With --prefix P (the gateway's `<server>_` namespace for tools and prompts), two rewrites of
//    JSON-RPC bodies:
//    - client -> server: in a `tools/call` or `prompts/get` request (alone or in a batch)
//      `params.name` N becomes `P_N`, and so does `params.ref.name` of a `completion/complete`
//      request whose ref is a `ref/prompt`;
//    - server -> client: in the response to a `tools/list` (`prompts/list`) request of the same
//      HTTP exchange (matched by JSON-RPC id, JSON or SSE body), each `result.tools[i].name`
//      (`result.prompts[i].name`) that starts with `P_` loses that prefix.
//    Resource URIs are not namespaced by the gateway, so they are not rewritten.
//    No other message, field, event or byte is changed. SSE responses are streamed through as they
//    arrive: raw chunks when nothing can need rewriting, event by event otherwise.
// 3. With --log, appends one JSON line per exchange (request body, response status, headers and
//    body or SSE events; the Authorization value is redacted) for diagnosis.
import http from 'node:http';
import fs from 'node:fs';

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : dflt;
};
const target = new URL(opt('--target', process.env.CONF_TARGET ?? ''));
const listen = Number(opt('--listen', '0'));
const tokenFile = opt('--token-file', '');
const token = tokenFile ? fs.readFileSync(tokenFile, 'utf8').trim() : process.env.CONF_TOKEN ?? '';
const prefix = opt('--prefix', '');
const logFile = opt('--log', '');

const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade']);
let seq = 0;

function log(entry) {
  if (logFile) fs.appendFileSync(logFile, JSON.stringify(entry) + '\n');
}

function redacted(headers) {
  const h = { ...headers };
  if (h.authorization) h.authorization = 'Bearer <redacted>';
  return h;
}

const LISTS = { 'tools/list': 'tools', 'prompts/list': 'prompts' };

// client -> server rewrite; records the listing request ids of the body (id -> result field)
function rewriteRequest(msg, listIds, notes) {
  if (Array.isArray(msg)) {
    for (const m of msg) rewriteRequest(m, listIds, notes);
    return;
  }
  if (!msg || typeof msg !== 'object' || typeof msg.method !== 'string') return;
  if (msg.method in LISTS && 'id' in msg) listIds.set(JSON.stringify(msg.id), LISTS[msg.method]);
  const named = (msg.method === 'tools/call' || msg.method === 'prompts/get') ? msg.params
    : msg.method === 'completion/complete' && msg.params?.ref?.type === 'ref/prompt' ? msg.params.ref
    : undefined;
  if (named && typeof named.name === 'string') {
    const from = named.name;
    named.name = `${prefix}_${from}`;
    notes.push(`${msg.method} name ${from} -> ${named.name}`);
  }
}

// server -> client rewrite of tools/list and prompts/list responses; true if anything changed
function rewriteResponse(msg, listIds, notes) {
  if (Array.isArray(msg)) return msg.map((m) => rewriteResponse(m, listIds, notes)).some(Boolean);
  if (!msg || typeof msg !== 'object' || !('id' in msg) || 'method' in msg) return false;
  const field = listIds.get(JSON.stringify(msg.id));
  if (!field || !Array.isArray(msg.result?.[field])) return false;
  let changed = false;
  for (const t of msg.result[field]) {
    if (typeof t?.name === 'string' && t.name.startsWith(`${prefix}_`)) {
      notes.push(`${field} result name ${t.name} -> ${t.name.slice(prefix.length + 1)}`);
      t.name = t.name.slice(prefix.length + 1);
      changed = true;
    }
  }
  return changed;
}

// Rewrite one SSE event's data lines (the JSON-RPC message) if it is a tools/list response.
function rewriteEvent(raw, listIds, notes) {
  const lines = raw.split(/\r?\n/);
  const dataLines = lines.filter((l) => l.startsWith('data:'));
  if (dataLines.length === 0) return raw;
  const data = dataLines.map((l) => l.slice(5).replace(/^ /, '')).join('\n');
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    return raw;
  }
  if (!rewriteResponse(msg, listIds, notes)) return raw;
  const others = lines.filter((l) => !l.startsWith('data:') && l !== '');
  return [...others, `data: ${JSON.stringify(msg)}`].join('\n');
}

const server = http.createServer((req, res) => {
  const id = ++seq;
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let body = Buffer.concat(chunks);
    const listIds = new Map();
    const notes = [];
    let parsed;
    if (body.length > 0) {
      try {
        parsed = JSON.parse(body.toString('utf8'));
      } catch {
        parsed = undefined;
      }
    }
    if (prefix && parsed !== undefined) {
      const before = JSON.stringify(parsed);
      rewriteRequest(parsed, listIds, notes);
      const after = JSON.stringify(parsed);
      if (after !== before) body = Buffer.from(after);
    }
    const headers = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (!HOP.has(k) && k !== 'content-length') headers[k] = v;
    }
    if (body.length > 0 || req.method === 'POST') headers['content-length'] = String(body.length);
    if (token) headers.authorization = `Bearer ${token}`;
    const entry = {
      seq: id, at: new Date().toISOString(), method: req.method, url: req.url,
      request_headers: redacted(headers), request_body: parsed ?? (body.length ? body.toString('utf8') : null), rewrites: notes,
    };
    const path = target.pathname + (req.url?.startsWith('/mcp') ? req.url.slice(4) : '');
    const up = http.request(
      { host: target.hostname, port: target.port, method: req.method, path, headers },
      (upRes) => {
        const outHeaders = {};
        for (const [k, v] of Object.entries(upRes.headers)) if (!HOP.has(k)) outHeaders[k] = v;
        const ctype = String(upRes.headers['content-type'] ?? '');
        const mustRewrite = prefix && listIds.size > 0;
        entry.status = upRes.statusCode;
        entry.response_headers = upRes.headers;
        const finish = () => log(entry);
        if (mustRewrite && ctype.includes('application/json')) {
          const parts = [];
          upRes.on('data', (c) => parts.push(c));
          upRes.on('end', () => {
            let out = Buffer.concat(parts);
            try {
              const msg = JSON.parse(out.toString('utf8'));
              if (rewriteResponse(msg, listIds, notes)) out = Buffer.from(JSON.stringify(msg));
              entry.response_body = msg;
            } catch {
              entry.response_body = out.toString('utf8');
            }
            delete outHeaders['content-length'];
            outHeaders['content-length'] = String(out.length);
            res.writeHead(upRes.statusCode, outHeaders);
            res.end(out);
            finish();
          });
          return;
        }
        res.writeHead(upRes.statusCode, outHeaders);
        res.flushHeaders();
        if (ctype.includes('text/event-stream')) {
          entry.events = [];
          let pending = '';
          upRes.setEncoding('utf8');
          upRes.on('data', (text) => {
            if (!mustRewrite) res.write(text);
            pending += text;
            let m;
            while ((m = /\r?\n\r?\n/.exec(pending))) {
              const raw = pending.slice(0, m.index);
              pending = pending.slice(m.index + m[0].length);
              entry.events.push(raw);
              if (mustRewrite) res.write(rewriteEvent(raw, listIds, notes) + '\n\n');
            }
          });
          upRes.on('end', () => {
            if (mustRewrite && pending) res.write(pending);
            res.end();
            finish();
          });
        } else {
          const parts = [];
          upRes.on('data', (c) => {
            parts.push(c);
            res.write(c);
          });
          upRes.on('end', () => {
            const text = Buffer.concat(parts).toString('utf8');
            try {
              entry.response_body = JSON.parse(text);
            } catch {
              entry.response_body = text;
            }
            res.end();
            finish();
          });
        }
        upRes.on('error', () => res.destroy());
      },
    );
    up.on('error', (e) => {
      entry.error = String(e);
      log(entry);
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32603, message: `proxy: ${e.message}` } }));
    });
    // The client going away ends the upstream request too (cancellation by disconnect).
    res.on('close', () => {
      if (!res.writableFinished) up.destroy();
    });
    up.end(body);
  });
});
server.on('connection', (s) => s.setNoDelay(true));
server.listen(listen, '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}/mcp`);
});
