// Runs one of the seed's examples (seed/*.js) as an agent host would: each
// mcp__flow-nexus__NAME(args) is callTool({name: NAME, arguments: args}) on the
// official TypeScript client, after tools/list. JavaScript names cannot hold
// "-", so the runner spells the prefix mcp__flow_nexus__ before evaluating; the
// example's text is otherwise the seed's. The host's human accepts the
// confirmations the server asks for, and each is printed.
import { readFile } from "node:fs/promises";
import { connect, main } from "./lib.mjs";

const file = process.argv[2];

await main(async (clients) => {
  const human = async (params) => {
    console.log(`[confirm] ${params.message}`);
    return { action: "accept", content: { confirm: true } };
  };
  const client = await connect("user", { elicit: human });
  clients.push(client);
  const shim = {};
  for (const { name } of client.tools) {
    shim[`mcp__flow_nexus__${name}`] = async (args = {}) => {
      const result = await client.callTool({ name, arguments: args });
      console.log(`[call] ${name} ${result.isError ? "error" : "ok"}`);
      if (result.isError) throw new Error(`${name}: ${result.content[0].text}`);
      return result.structuredContent;
    };
  }
  const source = (await readFile(file, "utf8")).replaceAll("mcp__flow-nexus__", "mcp__flow_nexus__");
  const AsyncFunction = Object.getPrototypeOf(async () => {}).constructor;
  await new AsyncFunction("USER_ID", ...Object.keys(shim), source)(process.env.MCP_USER, ...Object.values(shim));
});
