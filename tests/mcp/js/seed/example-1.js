// The seed's Example 1: Balance Management (cloud-payments-skill), as written there, with the placeholder
// user id filled in (USER_ID: the caller's own id). seed.mjs runs it against the real
// server through a thin shim: mcp__flow-nexus__NAME(args) is callTool({name: NAME, arguments: args}).
// Check current balance
const balance = await mcp__flow-nexus__check_balance();
console.log(`
Current Balance: ${balance.credits} credits
Tier: ${balance.tier}
Auto-refill: ${balance.auto_refill ? 'Enabled' : 'Disabled'}
`);
// If balance is low, show warning
if (balance.credits < 100) {
console.log("Warning: Low balance! Consider adding credits.");
// Create payment link
const payment = await mcp__flow-nexus__create_payment_link({
amount: 50
});
console.log(`Purchase credits: ${payment.payment_url}`);
console.log(`This will add ${payment.credits_amount} credits`);
}
