// The seed's Example 5: Cost Optimization Analysis (cloud-payments-skill), as written there, with the placeholder
// user id filled in (USER_ID: the caller's own id). seed.mjs runs it against the real
// server through a thin shim: mcp__flow-nexus__NAME(args) is callTool({name: NAME, arguments: args}).
// Analyze spending patterns
const history = await mcp__flow-nexus__ruv_history({
user_id: USER_ID,
limit: 100
});
// Group by category
const spending = {};
for (const tx of history.transactions) {
if (tx.amount < 0) {
const category = tx.type || 'other';
spending[category] = (spending[category] || 0) + Math.abs(tx.amount);
}
}
console.log("Spending by Category:");
for (const [category, amount] of Object.entries(spending)) {
console.log(`- ${category}: ${amount} credits`);
}
// Optimization recommendations
console.log("\nOptimization Tips:");
console.log("1. Use appropriate sandbox sizes (don't over-provision)");
console.log("2. Batch operations to reduce overhead");
console.log("3. Leverage templates instead of rebuilding");
console.log("4. Schedule non-urgent tasks for off-peak times");
console.log("5. Clean up unused sandboxes promptly");
