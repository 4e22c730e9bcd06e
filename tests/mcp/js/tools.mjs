// Every tool, each with a success and a refusal, as a host without elicitation
// calls them after tools/list: the official client validates each success
// against the tool's output schema, and each refusal must be a readable tool
// error (isError, the JSON body in the text), never a thrown McpError.
import assert from "node:assert/strict";
import { connect, main, ok, refused } from "./lib.mjs";

const USER = process.env.MCP_USER;
const OTHER = `${USER}-other`;
let n = 0;
const rid = () => `ts-${USER}-${n++}`;

await main(async (clients) => {
  const user = await connect("user");
  const service = await connect("service");
  clients.push(user, service);

  const names = user.tools.map((t) => t.name).sort();
  assert.deepEqual(names, ["app_store_earn_ruv", "check_balance", "configure_auto_refill", "create_payment_link",
    "get_payment_history", "ruv_balance", "ruv_history", "user_stats", "user_upgrade"]);
  for (const tool of user.tools) {
    assert.ok(tool.title && tool.annotations?.title, `${tool.name}: title`);
    for (const hint of ["readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"]) {
      assert.equal(typeof tool.annotations[hint], "boolean", `${tool.name}: ${hint}`);
    }
    assert.equal(tool.outputSchema?.type, "object", `${tool.name}: outputSchema`);
  }

  // app_store_earn_ruv: a service awards; a user may not.
  const award = await ok(service, "app_store_earn_ruv",
    { user_id: USER, amount: 12.345, reason: "Challenge completion: Advanced Algorithm", source: "challenge", request_id: rid() });
  assert.equal(award.credits, 112.345);
  assert.equal(award.transaction.type, "award");
  const denied = await refused(user, "app_store_earn_ruv",
    { user_id: OTHER, amount: 1, reason: "r", source: "challenge", request_id: rid() }, "role_required");
  assert.equal(denied.metadata.role, "user");

  // check_balance
  const balance = await ok(user, "check_balance");
  assert.deepEqual([balance.credits, balance.tier, balance.auto_refill], [112.345, "free", false]);
  await refused(user, "check_balance", { verbose: true }, "invalid_argument");

  // ruv_balance and user_stats: one's own, not another's.
  assert.equal((await ok(user, "ruv_balance", { user_id: USER })).earned_total, 12.345);
  await refused(user, "ruv_balance", { user_id: OTHER }, "not_your_account");
  assert.equal((await ok(user, "user_stats", { user_id: USER })).challenges_completed, 1);
  await refused(user, "user_stats", { user_id: OTHER }, "not_your_account");

  // ruv_history: at most 100 a page.
  const history = await ok(user, "ruv_history", { user_id: USER, limit: 5 });
  assert.deepEqual(history.transactions.map((t) => t.amount), [12.345, 100]);
  assert.equal(history.next_cursor, null);
  await refused(user, "ruv_history", { user_id: USER, limit: 101 }, "invalid_limit");

  // create_payment_link: USD 10 to 10,000; above the confirmation amount it needs the human.
  const link = await ok(user, "create_payment_link", { amount: 25.5, request_id: rid() });
  assert.deepEqual([link.amount, link.credits_amount, link.request_id_source], [25.5, 255, "given"]);
  const low = await refused(user, "create_payment_link", { amount: 5, request_id: rid() }, "invalid_amount");
  assert.deepEqual([low.metadata.min, low.metadata.max], [10, 10000]);
  const big = await refused(user, "create_payment_link", { amount: 150, request_id: rid() }, "confirmation_required");
  assert.equal(big.metadata.amount, 150);
  assert.match(big.message, /\$150\.00/);

  // get_payment_history
  const payments = (await ok(user, "get_payment_history", { limit: 10 })).payments;
  assert.deepEqual(payments.map((p) => [p.amount, p.status]), [[25.5, "pending"]]);
  await refused(user, "get_payment_history", { limit: 0 }, "invalid_limit");

  // configure_auto_refill: disabling always works; enabling is confirmed, then needs a saved card.
  const off = await ok(user, "configure_auto_refill", { enabled: false, request_id: rid() });
  assert.deepEqual([off.enabled, off.state], [false, "disabled"]);
  const refill = { enabled: true, threshold: 100, amount: 50, request_id: rid() };
  const ask = await refused(user, "configure_auto_refill", refill, "confirmation_required");
  assert.deepEqual([ask.metadata.amount, ask.metadata.threshold], [50, 100]);
  await refused(user, "configure_auto_refill", { ...refill, confirm: true }, "payment_method_required");

  // user_upgrade: Pro is confirmed, then needs a payment.
  await refused(user, "user_upgrade", { user_id: USER, tier: "pro", request_id: rid() }, "confirmation_required");
  const up = await ok(user, "user_upgrade", { user_id: USER, tier: "pro", confirm: true, request_id: rid() });
  assert.deepEqual([up.new_tier, up.status, up.completed, up.effective_date], ["pro", "payment_required", false, null]);
  await refused(user, "user_upgrade", { user_id: USER, tier: "gold", request_id: rid() }, "invalid_argument");

  await refused(user, "no_such_tool", {}, "unknown_tool");
});
