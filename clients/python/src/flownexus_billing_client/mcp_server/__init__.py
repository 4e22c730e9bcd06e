"""The `flow-nexus` MCP server: the seed's nine tools (check_balance,
ruv_balance, create_payment_link, configure_auto_refill, ruv_history,
get_payment_history, user_upgrade, app_store_earn_ruv, user_stats) for
agents, over stdio and streamable HTTP, as a client of the gRPC API.

Needs the `mcp` extra: `pip install 'flownexus-billing-client[mcp]'`; run it
with `flownexus-billing-mcp` (or `python -m server mcp` from the repository).
"""

from flownexus_billing_client.mcp_server.auth import ApiTokens, McpTokenVerifier
from flownexus_billing_client.mcp_server.server import NAME, FlowNexusMcp
from flownexus_billing_client.mcp_server.tools import TOOLS

__all__ = ["NAME", "TOOLS", "ApiTokens", "FlowNexusMcp", "McpTokenVerifier"]
