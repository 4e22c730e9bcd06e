// The seed's Example 3: Tracking Usage and Spending (cloud-payments-skill), as written there, with the placeholder
// user id filled in (USER_ID: the caller's own id). seed.mjs runs it against the real
// server through a thin shim: mcp__flow-nexus__NAME(args) is callTool({name: NAME, arguments: args}).
// Get user statistics
const stats = await mcp__flow-nexus__user_stats({
user_id: USER_ID
});
console.log(`
=== Usage Summary ===
Credits Earned: ${stats.credits_earned}
Credits Spent: ${stats.credits_spent}
Net Balance Change: ${stats.credits_earned - stats.credits_spent}
`);
// Get detailed transaction history
const history = await mcp__flow-nexus__ruv_history({
user_id: USER_ID,
limit: 20
});
console.log("\nRecent Transactions:");
for (const tx of history.transactions) {
const sign = tx.amount > 0 ? '+' : '';
console.log(`${tx.date}: ${sign}${tx.amount} - ${tx.description}`);
}
// Get payment history
const payments = await mcp__flow-nexus__get_payment_history({
limit: 10
});
console.log("\nRecent Payments:");
for (const payment of payments.payments) {
console.log(`${payment.date}: $${payment.amount} - ${payment.status}`);
}
