// Confirmation through a TypeScript host whose human accepts, one whose human
// declines (both with elicitation), over stdio; over stateless HTTP the server
// has no channel back to ask, so the explicit path applies (confirm: true).
import assert from "node:assert/strict";
import { connect, main, ok, refused, targets } from "./lib.mjs";

const asked = [];
const human = (action) => async (params) => {
  asked.push(params.message);
  assert.equal(params.requestedSchema.properties.confirm.type, "boolean");
  return action === "accept" ? { action, content: { confirm: true } } : { action };
};

await main(async (clients) => {
  const yes = await connect("accepts", { elicit: human("accept") });
  const no = await connect("declines", { elicit: human("decline") });
  clients.push(yes, no);
  const user = process.env.MCP_USER;
  if (targets.accepts.transport === "stdio") {
    const up = await ok(yes, "user_upgrade", { user_id: user, tier: "pro", request_id: "ts-up" });
    assert.deepEqual([up.new_tier, up.status], ["pro", "payment_required"]);
    assert.match(asked[0], /\$29\.00 \(USD\) per month/);
    const body = await refused(no, "create_payment_link", { amount: 500, confirm: true, request_id: "ts-big" }, "confirmation_declined");
    assert.equal(body.metadata.amount, 500);
    assert.equal(asked.length, 2);
  } else {
    await refused(yes, "user_upgrade", { user_id: user, tier: "pro", request_id: "ts-up" }, "confirmation_required");
    const up = await ok(yes, "user_upgrade", { user_id: user, tier: "pro", confirm: true, request_id: "ts-up" });
    assert.equal(up.status, "payment_required");
    await refused(no, "create_payment_link", { amount: 500, request_id: "ts-big" }, "confirmation_required");
    assert.equal(asked.length, 0);
  }
});
