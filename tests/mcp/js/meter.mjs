// ruv_history of a spend priced from usage, as a TypeScript SDK host sees it:
// after tools/list the SDK checks each result against the output schema, so a
// meter or quantity the schema does not allow would throw here.
import assert from "node:assert/strict";
import { connect, main, ok } from "./lib.mjs";

const user = process.env.MCP_USER;

await main(async (clients) => {
  const c = await connect("user");
  clients.push(c);
  const item = c.tools.find((t) => t.name === "ruv_history").outputSchema.properties.transactions.items;
  assert.ok(item.properties.meter && item.properties.quantity);
  const out = await ok(c, "ruv_history", { user_id: user, limit: 10 });
  const [byAmount, byUsage] = out.transactions;
  assert.equal(byUsage.meter, "sandbox.seconds");
  assert.equal(byUsage.quantity, 1500);
  assert.equal(byUsage.amount, -6);
  assert.equal(byAmount.meter, null);
  assert.equal(byAmount.quantity, null);
});
