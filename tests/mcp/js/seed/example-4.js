// The seed's Example 4: Tier Upgrade (cloud-payments-skill), as written there, with the placeholder
// user id filled in (USER_ID: the caller's own id). seed.mjs runs it against the real
// server through a thin shim: mcp__flow-nexus__NAME(args) is callTool({name: NAME, arguments: args}).
// Check current tier and credits
const balance = await mcp__flow-nexus__check_balance();
console.log(`Current tier: ${balance.tier}`);
// Compare tiers
const tierComparison = {
free: { credits: 100, price: 0 },
pro: { credits: 1000, price: 29 },
enterprise: { credits: "Unlimited", price: "Custom" }
};
if (balance.tier === "free") {
console.log("\nUpgrade Benefits:");
console.log("- Pro: 10x more credits (1000/month) for $29/month");
console.log("- Priority access to new features");
console.log("- Email support");
// Upgrade to Pro
const upgrade = await mcp__flow-nexus__user_upgrade({
user_id: USER_ID,
tier: "pro"
});
console.log(`\nUpgraded to ${upgrade.new_tier}!`);
console.log(`Monthly credits: ${upgrade.monthly_credits}`);
}
