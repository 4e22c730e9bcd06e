// The -32602 reproduction: after tools/list the client validates every result
// against the tool's output schema, refusals included. A refusal must come
// back as a readable tool error, not a thrown McpError.
import assert from "node:assert/strict";
import { connect, main, refused } from "./lib.mjs";

await main(async (clients) => {
  const user = await connect("user");
  clients.push(user);
  assert.ok(user.tools.some((t) => t.name === "create_payment_link" && t.outputSchema));
  const low = await refused(user, "create_payment_link", { amount: 5, request_id: "ts-low" }, "invalid_amount");
  assert.equal(low.metadata.min, 10);
  await refused(user, "app_store_earn_ruv",
    { user_id: "someone", amount: 1, reason: "r", source: "challenge", request_id: "ts-award" }, "role_required");
});
