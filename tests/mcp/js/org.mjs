// An org's wallet through the TypeScript SDK: a member's host started for the
// org (BILLING_MCP_ORG_ID) reads it; buying is refused as a readable tool
// error (org_role_required), which the SDK does not throw on; the owner's host
// names the org per call (org_id) and buys.
import assert from "node:assert/strict";
import { connect, main, ok, refused } from "./lib.mjs";

const org = process.env.MCP_ORG;

await main(async (clients) => {
  const member = await connect("member");
  const owner = await connect("owner");
  clients.push(member, owner);
  const input = member.tools.find((t) => t.name === "check_balance").inputSchema;
  assert.equal(input.properties.org_id.type, "string");
  const seen = await ok(member, "check_balance");
  assert.equal(seen.org_id, org);
  const body = await refused(member, "create_payment_link", { amount: 20, request_id: "ts-org-m1" }, "org_role_required");
  assert.equal(body.metadata.role, "member");
  const mine = await ok(member, "check_balance", { org_id: "" });
  assert.equal(mine.org_id, undefined);
  const link = await ok(owner, "create_payment_link", { amount: 20, request_id: "ts-org-o1", org_id: org });
  assert.equal(link.org_id, org);
  assert.equal(link.credits_amount, 200);
});
