// The seed's Example 2: Setting Up Auto-Refill (cloud-payments-skill), as written there, with the placeholder
// user id filled in (USER_ID: the caller's own id). seed.mjs runs it against the real
// server through a thin shim: mcp__flow-nexus__NAME(args) is callTool({name: NAME, arguments: args}).
// Check current auto-refill status
const balance = await mcp__flow-nexus__check_balance();
if (!balance.auto_refill) {
// Configure auto-refill to prevent service interruption
await mcp__flow-nexus__configure_auto_refill({
enabled: true,
threshold: 100, // Refill when below 100 credits
amount: 50 // Add $50 worth of credits
});
console.log("Auto-refill configured:");
console.log("- Trigger: When balance falls below 100 credits");
console.log("- Amount: $50 (~500 credits)");
}
// To disable auto-refill
// await mcp__flow-nexus__configure_auto_refill({ enabled: false });
