// cogward's own conformance upstream: an MCP server (Streamable HTTP, official TypeScript SDK,
// low-level `Server` API) implementing everything the server scenarios of
// @modelcontextprotocol/conformance 0.1.16 ask for: the `test_*` tools (text, image, audio,
// embedded resource, mixed content, logging, error, progress, sampling, elicitation, SEP-1034
// defaults, SEP-1330 enums, SEP-1699 reconnection), `json_schema_2020_12_tool`, resources (static
// text/binary, a template, subscribe/unsubscribe), prompts, completion, logging/setLevel, and
// DNS-rebinding protection (Host/Origin must be loopback).
//
// Written for this project from the scenarios' stated requirements; runs on Node 22 with type
// stripping (only erasable TypeScript syntax):
//   node tests/conformance/upstream.ts --port 0        # prints "listening on http://127.0.0.1:PORT/mcp"
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import {
  CallToolRequestSchema,
  CompleteRequestSchema,
  CreateMessageResultSchema,
  ElicitResultSchema,
  ListRootsResultSchema,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  McpError,
  ErrorCode,
  ReadResourceRequestSchema,
  SetLevelRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
} from '@modelcontextprotocol/sdk/types.js';

const args = process.argv.slice(2);
const argValue = (name: string, dflt: string): string => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const PORT = Number(argValue('--port', process.env.CONF_UPSTREAM_PORT ?? '0'));
// CONF_UPSTREAM_LOG=FILE: one JSON line per JSON-RPC message received or sent (for diagnosis).
const LOG = process.env.CONF_UPSTREAM_LOG ?? '';
function trace(dir: string, session: string | undefined, message: unknown, extra: Record<string, unknown> = {}) {
  if (LOG) fs.appendFileSync(LOG, JSON.stringify({ at: new Date().toISOString(), dir, session: session ?? null, ...extra, message }) + '\n');
}

// A 1x1 red PNG and a tiny (44-byte header + 2 samples) WAV, generated here.
const PNG_1X1 =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==';
function tinyWav(): string {
  const samples = Buffer.from([0x00, 0x00, 0x00, 0x00]);
  const h = Buffer.alloc(44);
  h.write('RIFF', 0); h.writeUInt32LE(36 + samples.length, 4); h.write('WAVE', 8);
  h.write('fmt ', 12); h.writeUInt32LE(16, 16); h.writeUInt16LE(1, 20); h.writeUInt16LE(1, 22);
  h.writeUInt32LE(8000, 24); h.writeUInt32LE(16000, 28); h.writeUInt16LE(2, 32); h.writeUInt16LE(16, 34);
  h.write('data', 36); h.writeUInt32LE(samples.length, 40);
  return Buffer.concat([h, samples]).toString('base64');
}
const WAV = tinyWav();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const LEVELS = ['debug', 'info', 'notice', 'warning', 'error', 'critical', 'alert', 'emergency'];

const noArgs = { type: 'object', properties: {} };
const TOOLS = [
  { name: 'test_simple_text', description: 'Returns a simple text response', inputSchema: noArgs },
  { name: 'test_image_content', description: 'Returns a 1x1 PNG image', inputSchema: noArgs },
  { name: 'test_audio_content', description: 'Returns a short WAV clip', inputSchema: noArgs },
  { name: 'test_embedded_resource', description: 'Returns an embedded text resource', inputSchema: noArgs },
  { name: 'test_multiple_content_types', description: 'Returns text, image and resource content', inputSchema: noArgs },
  { name: 'test_tool_with_logging', description: 'Sends three info log messages while running', inputSchema: noArgs },
  { name: 'test_error_handling', description: 'Always returns an error result', inputSchema: noArgs },
  { name: 'test_tool_with_progress', description: 'Reports progress 0, 50, 100 of 100 to the request progressToken', inputSchema: noArgs },
  {
    name: 'test_sampling', description: 'Asks the client to sample an LLM completion',
    inputSchema: { type: 'object', properties: { prompt: { type: 'string', description: 'The prompt to send to the LLM' } }, required: ['prompt'] },
  },
  {
    name: 'test_elicitation', description: 'Asks the client for user input',
    inputSchema: { type: 'object', properties: { message: { type: 'string', description: 'The message to show the user' } }, required: ['message'] },
  },
  { name: 'test_elicitation_sep1034_defaults', description: 'Elicitation with defaults for every primitive type (SEP-1034)', inputSchema: noArgs },
  { name: 'test_elicitation_sep1330_enums', description: 'Elicitation with the five enum schema variants (SEP-1330)', inputSchema: noArgs },
  { name: 'test_reconnection', description: 'Closes its SSE stream mid-call and answers after the client reconnects (SEP-1699)', inputSchema: noArgs },
  {
    // Not used by the suite: a probe of lossless forwarding (every optional field the 2025-11-25
    // schema allows on a tool and on a result, plus an extra result field, which Result permits).
    name: 'test_lossless_fields', title: 'Lossless fields probe', description: 'Returns every optional result field',
    inputSchema: noArgs,
    outputSchema: { type: 'object', properties: { answer: { type: 'integer' } }, required: ['answer'] },
    annotations: { title: 'Lossless probe', readOnlyHint: true, idempotentHint: true },
    icons: [{ src: 'data:image/png;base64,' + 'iVBORw0KGgo=', mimeType: 'image/png' }],
    _meta: { 'example.com/tool-meta': { kept: true } },
  },
  // Not used by the suite either: probes of cancellation both ways and of roots relays.
  {
    name: 'test_cancellable', description: 'Runs until cancelled (or `seconds` pass); the cancellations it saw are in test_cancellations',
    inputSchema: { type: 'object', properties: { seconds: { type: 'number' } } },
  },
  { name: 'test_cancellations', description: 'The cancellations test_cancellable saw, as JSON text', inputSchema: noArgs },
  {
    name: 'test_sampling_cancelled', description: 'Asks the client to sample, then cancels the request after `ms`',
    inputSchema: { type: 'object', properties: { ms: { type: 'number' } } },
  },
  { name: 'test_roots', description: "Asks the client for its roots and returns them", inputSchema: noArgs },
  {
    name: 'test_touch_resource', description: 'Tells subscribers (on the standalone stream) that `uri` changed',
    inputSchema: { type: 'object', properties: { uri: { type: 'string' } } },
  },
  {
    name: 'json_schema_2020_12_tool', description: 'Tool with JSON Schema 2020-12 features',
    inputSchema: {
      $schema: 'https://json-schema.org/draft/2020-12/schema',
      type: 'object',
      $defs: { address: { type: 'object', properties: { street: { type: 'string' }, city: { type: 'string' } } } },
      properties: { name: { type: 'string' }, address: { $ref: '#/$defs/address' } },
      additionalProperties: false,
    },
  },
];

const RESOURCES = [
  { uri: 'test://static-text', name: 'static-text', description: 'A static text resource', mimeType: 'text/plain' },
  { uri: 'test://static-binary', name: 'static-binary', description: 'A static binary (PNG) resource', mimeType: 'image/png' },
  { uri: 'test://watched-resource', name: 'watched-resource', description: 'A resource clients may subscribe to', mimeType: 'text/plain' },
];
const TEMPLATE = { uriTemplate: 'test://template/{id}/data', name: 'template-data', description: 'Data for an id', mimeType: 'application/json' };

const PROMPTS = [
  { name: 'test_simple_prompt', description: 'A prompt without arguments' },
  {
    name: 'test_prompt_with_arguments', description: 'A prompt with two arguments',
    arguments: [
      { name: 'arg1', description: 'First test argument', required: true },
      { name: 'arg2', description: 'Second test argument', required: true },
    ],
  },
  {
    name: 'test_prompt_with_embedded_resource', description: 'A prompt embedding a resource',
    arguments: [{ name: 'resourceUri', description: 'URI of the resource to embed', required: true }],
  },
  { name: 'test_prompt_with_image', description: 'A prompt with an image' },
];

const COMPLETIONS: Record<string, string[]> = {
  arg1: ['paris', 'park', 'party', 'hello'],
  arg2: ['world', 'wide', 'web'],
  resourceUri: ['test://static-text', 'test://watched-resource'],
  id: ['123', '456', '789'],
};

type Session = { transport: StreamableHTTPServerTransport; server: Server };
// What test_cancellable saw: each cancelled call's reason.
const cancellations: unknown[] = [];
const sessions = new Map<string, Session>();

function makeServer(): Server {
  const server = new Server(
    { name: 'cogward-conformance-upstream', version: '1.0.0' },
    {
      capabilities: {
        tools: { listChanged: false },
        resources: { subscribe: true, listChanged: false },
        prompts: { listChanged: false },
        logging: {},
        completions: {},
      },
    },
  );
  let minLevel = 'info';
  const subscriptions = new Set<string>();

  server.setRequestHandler(SetLevelRequestSchema, async (req) => {
    minLevel = req.params.level;
    return {};
  });

  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));

  server.setRequestHandler(CallToolRequestSchema, async (req, extra) => {
    const a = (req.params.arguments ?? {}) as Record<string, unknown>;
    const log = async (level: string, data: string) => {
      if (LEVELS.indexOf(level) < LEVELS.indexOf(minLevel)) return;
      await extra.sendNotification({ method: 'notifications/message', params: { level, logger: 'conformance-upstream', data } });
    };
    switch (req.params.name) {
      case 'test_simple_text':
        return { content: [{ type: 'text', text: 'This is a simple text response for testing.' }] };
      case 'test_image_content':
        return { content: [{ type: 'image', data: PNG_1X1, mimeType: 'image/png' }] };
      case 'test_audio_content':
        return { content: [{ type: 'audio', data: WAV, mimeType: 'audio/wav' }] };
      case 'test_embedded_resource':
        return {
          content: [{ type: 'resource', resource: { uri: 'test://embedded-resource', mimeType: 'text/plain', text: 'This is an embedded resource content.' } }],
        };
      case 'test_multiple_content_types':
        return {
          content: [
            { type: 'text', text: 'Multiple content types test:' },
            { type: 'image', data: PNG_1X1, mimeType: 'image/png' },
            { type: 'resource', resource: { uri: 'test://mixed-content-resource', mimeType: 'application/json', text: JSON.stringify({ test: 'data', value: 123 }) } },
          ],
        };
      case 'test_tool_with_logging':
        await log('info', 'Tool execution started');
        await sleep(50);
        await log('info', 'Tool processing data');
        await sleep(50);
        await log('info', 'Tool execution completed');
        return { content: [{ type: 'text', text: 'Tool with logging executed successfully' }] };
      case 'test_error_handling':
        return { isError: true, content: [{ type: 'text', text: 'This tool intentionally returns an error for testing' }] };
      case 'test_tool_with_progress': {
        const token = req.params._meta?.progressToken;
        for (const progress of [0, 50, 100]) {
          if (token !== undefined) {
            await extra.sendNotification({ method: 'notifications/progress', params: { progressToken: token, progress, total: 100 } });
          }
          if (progress < 100) await sleep(50);
        }
        return { content: [{ type: 'text', text: `Progress tool completed (progressToken ${JSON.stringify(token ?? null)})` }] };
      }
      case 'test_cancellable': {
        // Noted as the cancellation arrives, before the server acknowledges its POST.
        extra.signal.addEventListener('abort', () => cancellations.push({ reason: String(extra.signal.reason ?? '') }));
        const until = Date.now() + Number(a.seconds ?? 30) * 1000;
        while (Date.now() < until && !extra.signal.aborted) await sleep(20);
        return { content: [{ type: 'text', text: extra.signal.aborted ? 'cancelled' : 'ran to the end' }] };
      }
      case 'test_cancellations':
        return { content: [{ type: 'text', text: JSON.stringify(cancellations) }] };
      case 'test_sampling_cancelled': {
        try {
          await extra.sendRequest(
            { method: 'sampling/createMessage', params: { messages: [{ role: 'user', content: { type: 'text', text: 'never mind' } }], maxTokens: 10 } },
            CreateMessageResultSchema,
            { timeout: Number(a.ms ?? 500) },
          );
          return { content: [{ type: 'text', text: 'answered before the cancellation' }] };
        } catch (e) {
          return { content: [{ type: 'text', text: `cancelled the sampling request: ${String(e)}` }] };
        }
      }
      case 'test_touch_resource': {
        const uri = String(a.uri ?? '');
        if (!subscriptions.has(uri)) return { content: [{ type: 'text', text: `nobody subscribed to ${uri}` }] };
        await server.sendResourceUpdated({ uri });
        return { content: [{ type: 'text', text: `told the subscribers of ${uri}` }] };
      }
      case 'test_roots': {
        if (!server.getClientCapabilities()?.roots) {
          return { isError: true, content: [{ type: 'text', text: 'The client does not support roots' }] };
        }
        const r = await extra.sendRequest({ method: 'roots/list' }, ListRootsResultSchema);
        return { content: [{ type: 'text', text: `roots: ${JSON.stringify(r.roots)}` }] };
      }
      case 'test_sampling': {
        if (!server.getClientCapabilities()?.sampling) {
          return { isError: true, content: [{ type: 'text', text: 'The client does not support sampling' }] };
        }
        const r = await extra.sendRequest(
          { method: 'sampling/createMessage', params: { messages: [{ role: 'user', content: { type: 'text', text: String(a.prompt ?? '') } }], maxTokens: 100 } },
          CreateMessageResultSchema,
        );
        const c = r.content as { type: string; text?: string };
        return { content: [{ type: 'text', text: `LLM response: ${c.type === 'text' ? c.text : JSON.stringify(c)}` }] };
      }
      case 'test_elicitation': {
        if (!server.getClientCapabilities()?.elicitation) {
          return { isError: true, content: [{ type: 'text', text: 'The client does not support elicitation' }] };
        }
        const r = await extra.sendRequest(
          {
            method: 'elicitation/create',
            params: {
              message: String(a.message ?? ''),
              requestedSchema: {
                type: 'object',
                properties: {
                  username: { type: 'string', description: "User's response" },
                  email: { type: 'string', description: "User's email address" },
                },
                required: ['username', 'email'],
              },
            },
          },
          ElicitResultSchema,
        );
        return { content: [{ type: 'text', text: `User response: action=${r.action}, content=${JSON.stringify(r.content ?? {})}` }] };
      }
      case 'test_elicitation_sep1034_defaults': {
        const r = await extra.sendRequest(
          {
            method: 'elicitation/create',
            params: {
              message: 'Please confirm or change these defaults',
              requestedSchema: {
                type: 'object',
                properties: {
                  name: { type: 'string', description: 'Name', default: 'John Doe' },
                  age: { type: 'integer', description: 'Age', default: 30 },
                  score: { type: 'number', description: 'Score', default: 95.5 },
                  status: { type: 'string', description: 'Status', enum: ['active', 'inactive', 'pending'], default: 'active' },
                  verified: { type: 'boolean', description: 'Verified', default: true },
                },
              },
            },
          },
          ElicitResultSchema,
        );
        return { content: [{ type: 'text', text: `Elicitation completed: action=${r.action}, content=${JSON.stringify(r.content ?? {})}` }] };
      }
      case 'test_elicitation_sep1330_enums': {
        const r = await extra.sendRequest(
          {
            method: 'elicitation/create',
            params: {
              message: 'Pick some options',
              requestedSchema: {
                type: 'object',
                properties: {
                  untitledSingle: { type: 'string', enum: ['option1', 'option2', 'option3'] },
                  titledSingle: {
                    type: 'string',
                    oneOf: [
                      { const: 'value1', title: 'First Option' },
                      { const: 'value2', title: 'Second Option' },
                      { const: 'value3', title: 'Third Option' },
                    ],
                  },
                  legacyEnum: { type: 'string', enum: ['opt1', 'opt2', 'opt3'], enumNames: ['Option One', 'Option Two', 'Option Three'] },
                  untitledMulti: { type: 'array', items: { type: 'string', enum: ['option1', 'option2', 'option3'] } },
                  titledMulti: {
                    type: 'array',
                    items: {
                      anyOf: [
                        { const: 'value1', title: 'First Choice' },
                        { const: 'value2', title: 'Second Choice' },
                        { const: 'value3', title: 'Third Choice' },
                      ],
                    },
                  },
                },
              },
            },
          },
          ElicitResultSchema,
        );
        return { content: [{ type: 'text', text: `Elicitation completed: action=${r.action}, content=${JSON.stringify(r.content ?? {})}` }] };
      }
      case 'test_reconnection': {
        // SEP-1699: end this request's SSE stream (after its priming event); the answer is stored
        // in the event store and replayed when the client reconnects with Last-Event-ID. The SDK
        // offers `closeSSEStream` only where the client can resume (protocol >= 2025-11-25, which
        // got a priming event); an older client gets its answer on the open stream.
        await sleep(100);
        extra.closeSSEStream?.();
        await sleep(200);
        return { content: [{ type: 'text', text: 'Reconnection test completed: answered after the stream was closed.' }] };
      }
      case 'test_lossless_fields':
        return {
          content: [
            { type: 'text', text: '{"answer":42}', annotations: { audience: ['assistant'], priority: 0.5 }, _meta: { 'example.com/block': 1 } },
            { type: 'resource_link', uri: 'test://static-text', name: 'static-text', mimeType: 'text/plain' },
          ],
          structuredContent: { answer: 42 },
          _meta: { 'example.com/result-meta': { kept: true } },
          'example.com/extra': 'an extra result field',
        };
      case 'json_schema_2020_12_tool':
        return { content: [{ type: 'text', text: `json_schema_2020_12_tool called with ${JSON.stringify(a)}` }] };
      default:
        throw new McpError(ErrorCode.InvalidParams, `Unknown tool: ${req.params.name}`);
    }
  });

  server.setRequestHandler(ListResourcesRequestSchema, async () => ({ resources: RESOURCES }));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({ resourceTemplates: [TEMPLATE] }));
  server.setRequestHandler(ReadResourceRequestSchema, async (req) => {
    const uri = req.params.uri;
    if (uri === 'test://static-text') {
      return { contents: [{ uri, mimeType: 'text/plain', text: 'This is the content of the static text resource.' }] };
    }
    if (uri === 'test://static-binary') return { contents: [{ uri, mimeType: 'image/png', blob: PNG_1X1 }] };
    if (uri === 'test://watched-resource') return { contents: [{ uri, mimeType: 'text/plain', text: 'Watched resource content.' }] };
    const m = /^test:\/\/template\/([^/]+)\/data$/.exec(uri);
    if (m) {
      const id = decodeURIComponent(m[1]);
      return { contents: [{ uri, mimeType: 'application/json', text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` }) }] };
    }
    throw new McpError(-32002, `Resource not found: ${uri}`);
  });
  server.setRequestHandler(SubscribeRequestSchema, async (req) => {
    subscriptions.add(req.params.uri);
    return {};
  });
  server.setRequestHandler(UnsubscribeRequestSchema, async (req) => {
    subscriptions.delete(req.params.uri);
    return {};
  });

  server.setRequestHandler(ListPromptsRequestSchema, async () => ({ prompts: PROMPTS }));
  server.setRequestHandler(GetPromptRequestSchema, async (req) => {
    const a = req.params.arguments ?? {};
    switch (req.params.name) {
      case 'test_simple_prompt':
        return { messages: [{ role: 'user', content: { type: 'text', text: 'This is a simple prompt for testing.' } }] };
      case 'test_prompt_with_arguments':
        return { messages: [{ role: 'user', content: { type: 'text', text: `Prompt with arguments: arg1='${a.arg1}', arg2='${a.arg2}'` } }] };
      case 'test_prompt_with_embedded_resource':
        return {
          messages: [
            { role: 'user', content: { type: 'resource', resource: { uri: a.resourceUri ?? 'test://embedded', mimeType: 'text/plain', text: 'Embedded resource content for testing.' } } },
            { role: 'user', content: { type: 'text', text: 'Please process the embedded resource above.' } },
          ],
        };
      case 'test_prompt_with_image':
        return {
          messages: [
            { role: 'user', content: { type: 'image', data: PNG_1X1, mimeType: 'image/png' } },
            { role: 'user', content: { type: 'text', text: 'Please analyze the image above.' } },
          ],
        };
      default:
        throw new McpError(ErrorCode.InvalidParams, `Unknown prompt: ${req.params.name}`);
    }
  });

  server.setRequestHandler(CompleteRequestSchema, async (req) => {
    const { name, value } = req.params.argument;
    const values = (COMPLETIONS[name] ?? []).filter((v) => v.startsWith(value ?? ''));
    return { completion: { values, total: values.length, hasMore: false } };
  });

  return server;
}

// An in-memory event store (resumability, SEP-1699): events per stream, replayed after an id.
function eventStore() {
  const events: { id: string; streamId: string; message: unknown }[] = [];
  return {
    async storeEvent(streamId: string, message: unknown): Promise<string> {
      const id = `${streamId}_${events.length}`;
      events.push({ id, streamId, message });
      return id;
    },
    async getStreamIdForEventId(eventId: string): Promise<string | undefined> {
      return events.find((e) => e.id === eventId)?.streamId;
    },
    async replayEventsAfter(lastEventId: string, { send }: { send: (id: string, m: unknown) => Promise<void> }): Promise<string> {
      const at = events.findIndex((e) => e.id === lastEventId);
      if (at < 0) return '';
      const streamId = events[at].streamId;
      for (const e of events.slice(at + 1)) {
        if (e.streamId === streamId) await send(e.id, e.message);
      }
      return streamId;
    },
  };
}

// DNS rebinding protection: only loopback Host and Origin values.
const LOOPBACK = /^(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$/i;
function loopbackOnly(req: http.IncomingMessage): string | null {
  const host = req.headers.host ?? '';
  if (!LOOPBACK.test(host)) return `Host ${JSON.stringify(host)} is not a loopback host`;
  const origin = req.headers.origin;
  if (origin !== undefined) {
    try {
      if (!LOOPBACK.test(new URL(origin).host)) return `Origin ${JSON.stringify(origin)} is not a loopback origin`;
    } catch {
      return `Origin ${JSON.stringify(origin)} is malformed`;
    }
  }
  return null;
}

function reject(res: http.ServerResponse, status: number, message: string, id: unknown = null) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', id, error: { code: -32000, message } }));
}

async function readBody(req: http.IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : undefined;
}

const isInitialize = (body: unknown): boolean =>
  Array.isArray(body) ? body.some(isInitialize) : !!body && (body as { method?: string }).method === 'initialize';

const httpServer = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname !== '/mcp') return reject(res, 404, 'not found');
    const refused = loopbackOnly(req);
    if (refused) return reject(res, 403, `Forbidden: ${refused}`);
    const sid = req.headers['mcp-session-id'] as string | undefined;

    let body: unknown;
    if (req.method === 'POST') {
      try {
        body = await readBody(req);
      } catch {
        return reject(res, 400, 'Parse error', null);
      }
    }
    trace('in', sid, body ?? null, { http: req.method, headers: { accept: req.headers.accept, 'mcp-protocol-version': req.headers['mcp-protocol-version'], 'last-event-id': req.headers['last-event-id'] } });
    if (sid) {
      const s = sessions.get(sid);
      if (!s) return reject(res, 404, 'Session not found');
      return await s.transport.handleRequest(req, res, body);
    }
    if (req.method !== 'POST' || !isInitialize(body)) return reject(res, 400, 'Bad Request: no valid session ID provided');
    let transport: StreamableHTTPServerTransport;
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      eventStore: eventStore(),
      retryInterval: 1000,
      onsessioninitialized: (id: string) => {
        sessions.set(id, { transport, server });
      },
    });
    const send = transport.send.bind(transport);
    transport.send = async (message, options) => {
      trace('out', transport.sessionId, message, options?.relatedRequestId !== undefined ? { relatedRequestId: options.relatedRequestId } : {});
      return send(message, options);
    };
    transport.onclose = () => {
      if (transport.sessionId) sessions.delete(transport.sessionId);
    };
    const server = makeServer();
    await server.connect(transport);
    await transport.handleRequest(req, res, body);
  } catch (e) {
    console.error('request failed:', e);
    if (!res.headersSent) reject(res, 500, 'Internal error');
  }
});

httpServer.listen(PORT, '127.0.0.1', () => {
  const addr = httpServer.address() as { port: number };
  console.log(`listening on http://127.0.0.1:${addr.port}/mcp`);
});
