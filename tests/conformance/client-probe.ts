// The official TypeScript SDK client against one MCP endpoint: initialize, list tools, call every
// tool (arguments for the ones that need them, a progressToken on each call, sampling,
// elicitation and roots handlers that answer fixed values), and print one JSON record of everything seen:
// the initialize result, the tool list, and per tool the result or error plus the notifications
// and server-to-client requests received while it ran. compare_clients.py diffs two records.
//
//   node client-probe.ts --url URL [--token-file F] [--prefix conf]
// With --prefix, tool names are `<prefix>_<name>` on the wire (the gateway's namespace); the record
// keeps the names as listed (the differ strips the prefix).
import fs from 'node:fs';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  CallToolResultSchema,
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  ListRootsRequestSchema,
  LoggingMessageNotificationSchema,
} from '@modelcontextprotocol/sdk/types.js';

const argv = process.argv.slice(2);
const opt = (n: string, d: string) => (argv.indexOf(n) >= 0 ? argv[argv.indexOf(n) + 1] : d);
const url = opt('--url', '');
const tokenFile = opt('--token-file', '');
const headers: Record<string, string> = {};
if (tokenFile) headers.authorization = `Bearer ${fs.readFileSync(tokenFile, 'utf8').trim()}`;

const ARGS: Record<string, Record<string, unknown>> = {
  test_sampling: { prompt: 'Test prompt for sampling' },
  test_elicitation: { message: 'Please provide your information' },
  json_schema_2020_12_tool: { name: 'x', address: { street: 's', city: 'c' } },
  test_cancellable: { seconds: 0 },
  test_sampling_cancelled: { ms: 10000 },
};

const events: unknown[] = [];
const client = new Client({ name: 'cogward-probe-ts', version: '1.0.0' }, { capabilities: { sampling: {}, elicitation: {}, roots: {} } });
client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
  events.push({ notification: n.method, params: n.params });
});
client.setRequestHandler(CreateMessageRequestSchema, async (r) => {
  events.push({ request: r.method, params: r.params });
  return { role: 'assistant', content: { type: 'text', text: 'probe sampling answer' }, model: 'probe-model', stopReason: 'endTurn' };
});
client.setRequestHandler(ListRootsRequestSchema, async (r) => {
  events.push({ request: r.method });
  return { roots: [{ uri: 'file:///probe', name: 'probe' }] };
});
client.setRequestHandler(ElicitRequestSchema, async (r) => {
  events.push({ request: r.method, params: r.params });
  return { action: 'accept', content: { username: 'probe', email: 'probe@example.com' } };
});

const record: Record<string, unknown> = { client: 'typescript-sdk', url };
try {
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } }));
  record.initialize = { serverCapabilities: client.getServerCapabilities(), serverVersion: client.getServerVersion(), instructions: client.getInstructions() };
  try {
    await client.setLoggingLevel('debug');
    record.setLoggingLevel = 'ok';
  } catch (e) {
    record.setLoggingLevel = { error: String((e as Error).message ?? e) };
  }
  const listed = await client.listTools();
  record.tools = listed.tools;
  const calls: Record<string, unknown> = {};
  let n = 0;
  for (const tool of listed.tools) {
    const bare = tool.name.replace(/^[^_]+_(?=(test_|json_schema))/, '');
    events.length = 0;
    const progress: unknown[] = [];
    try {
      const result = await client.request(
        { method: 'tools/call', params: { name: tool.name, arguments: ARGS[bare] ?? {}, _meta: { progressToken: `probe-${++n}` } } },
        CallToolResultSchema,
        { onprogress: (p) => progress.push(p), timeout: 20000 },
      );
      await new Promise((r) => setTimeout(r, 150));
      calls[tool.name] = { result, progress, events: [...events] };
    } catch (e) {
      calls[tool.name] = { error: String((e as Error).message ?? e), progress, events: [...events] };
    }
  }
  record.calls = calls;
  await client.close();
} catch (e) {
  record.fatal = String((e as Error).stack ?? e);
}
console.log(JSON.stringify(record, null, 2));
process.exit(0);
