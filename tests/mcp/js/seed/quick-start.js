// The seed's Quick Start (cloud-payments-skill), as written there, with the placeholder
// user id filled in (USER_ID: the caller's own id). seed.mjs runs it against the real
// server through a thin shim: mcp__flow-nexus__NAME(args) is callTool({name: NAME, arguments: args}).
// Check current balance
const balance = await mcp__flow-nexus__check_balance();
console.log(`Credits: ${balance.credits}, Auto-refill: ${balance.auto_refill}`);
// Purchase credits
const paymentLink = await mcp__flow-nexus__create_payment_link({
amount: 50 // USD minimum $10
});
// Configure auto-refill
await mcp__flow-nexus__configure_auto_refill({
enabled: true,
threshold: 100,
amount: 50
});
// View transaction history
const history = await mcp__flow-nexus__ruv_history({
user_id: USER_ID,
limit: 20
});
