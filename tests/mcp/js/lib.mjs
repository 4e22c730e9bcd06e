// Connecting to the flow-nexus MCP server as a host built on the official
// TypeScript SDK does: initialize, tools/list, then tools/call. pytest starts
// the billing server and passes each principal's connection in MCP_TARGETS:
//   {"user": {"transport": "stdio", "command": ..., "args": [...], "env": {...}, "cwd": ...},
//    "service": {"transport": "http", "url": ..., "bearer": ...}}
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ElicitRequestSchema } from "@modelcontextprotocol/sdk/types.js";

export const targets = JSON.parse(process.env.MCP_TARGETS ?? "{}");

function transportFor(target) {
  if (target.transport === "stdio") {
    return new StdioClientTransport({ command: target.command, args: target.args, env: target.env, cwd: target.cwd, stderr: "inherit" });
  }
  return new StreamableHTTPClientTransport(new URL(target.url), {
    requestInit: { headers: { Authorization: `Bearer ${target.bearer}` } },
  });
}

// `elicit`: undefined for a host without elicitation; else a function from the
// server's elicitation request to the human's answer ({action, content}).
export async function connect(name, { elicit, listTools = true } = {}) {
  const target = targets[name];
  assert.ok(target, `no target named ${name}`);
  const capabilities = elicit ? { elicitation: { form: {} } } : {};
  const client = new Client({ name: `ts-host-${name}`, version: "1.0.0" }, { capabilities });
  if (elicit) {
    client.setRequestHandler(ElicitRequestSchema, async (request) => elicit(request.params));
  }
  await client.connect(transportFor(target));
  client.tools = listTools ? (await client.listTools()).tools : [];
  return client;
}

// A success: structured content the SDK already checked against the tool's outputSchema.
export async function ok(client, name, args = {}) {
  const result = await client.callTool({ name, arguments: args });
  assert.ok(!result.isError, `${name}(${JSON.stringify(args)}) failed: ${JSON.stringify(result.content)}`);
  assert.equal(typeof result.structuredContent, "object");
  assert.deepEqual(JSON.parse(result.content[0].text), result.structuredContent);
  return result.structuredContent;
}

// A refusal: a tool result with isError whose text is the error body, never a thrown McpError.
export async function refused(client, name, args, error) {
  const result = await client.callTool({ name, arguments: args });
  assert.equal(result.isError, true, `${name}(${JSON.stringify(args)}) was expected to fail with ${error}`);
  const body = JSON.parse(result.content[0].text);
  assert.equal(body.error, error, JSON.stringify(body));
  assert.equal(typeof body.message, "string");
  assert.equal(typeof body.retryable, "boolean");
  assert.equal(typeof body.metadata, "object");
  return body;
}

export async function main(run) {
  const clients = [];
  try {
    await run(clients);
    console.log("ok");
  } catch (err) {
    console.error(err?.stack ?? String(err));
    process.exitCode = 1;
  } finally {
    await Promise.allSettled(clients.map((c) => c.close()));
  }
}
