"""Confirmation before a recurring or large charge.

A tool that would start a charge (enabling auto-refill, upgrading to Pro, a
payment link above the configured amount) first asks the human, with the
exact amounts, through MCP elicitation:
- on the handshake-era protocols (2025-11-25 and before) as an
  `elicitation/create` request on the call's own channel (stdio, or an HTTP
  session whose responses stream);
- on 2026-07-28 as an `InputRequiredResult` the client answers by retrying
  the call with the human's response (this works statelessly too).
Accept with `confirm: true` applies the call; decline, cancel or anything else
applies nothing (`confirmation_declined`). A host that cannot ask the human
(no elicitation capability, or a channel with no way back) gets
`confirmation_required` with the amounts, and the call applies only when it is
made again with the argument `confirm: true`. When the host can ask the human,
it is the human's answer that counts: the `confirm` argument is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from flownexus_billing_client.mcp_server.units import Refusal

INPUT_KEY = "confirm"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "confirm": {"type": "boolean", "title": "Confirm", "description": "Yes: apply this charge."},
    },
    "required": ["confirm"],
}


@dataclass(frozen=True)
class Charge:
    """What the human is asked to agree to: `message` in words with the exact
    amounts, `amounts` the same in the tools' units (for the refusal body)."""

    message: str
    amounts: dict[str, Any] = field(default_factory=dict)


def _can_elicit(ctx: Any) -> bool:
    session = getattr(ctx, "session", None)
    caps = getattr(session, "client_capabilities", None)
    return caps is not None and caps.elicitation is not None


def _accepted(answer: types.ElicitResult | Any) -> bool:
    return (
        isinstance(answer, types.ElicitResult)
        and answer.action == "accept"
        and isinstance(answer.content, dict)
        and answer.content.get("confirm") is True
    )


def _declined(charge: Charge, action: str) -> Refusal:
    return Refusal(
        "confirmation_declined",
        f"Not applied: the human did not confirm ({action}). {charge.message}",
        {**charge.amounts, "action": action},
    )


async def confirm(ctx: Any, params: types.CallToolRequestParams, charge: Charge, arguments: dict[str, Any]) -> types.InputRequiredResult | None:
    """None once confirmed; an InputRequiredResult to send back (2026-07-28);
    else raises the refusal that says why nothing was applied."""
    request = types.ElicitRequest(params=types.ElicitRequestFormParams(message=charge.message, requested_schema=SCHEMA))
    if _can_elicit(ctx) and getattr(ctx, "protocol_version", None) in MODERN_PROTOCOL_VERSIONS:
        answer = (params.input_responses or {}).get(INPUT_KEY)
        if answer is None:
            return types.InputRequiredResult(input_requests={INPUT_KEY: request})
        if not _accepted(answer):
            raise _declined(charge, getattr(answer, "action", "no answer"))
        return None
    if _can_elicit(ctx) and ctx.session.can_send_request:
        answer = await ctx.session.elicit_form(charge.message, SCHEMA, related_request_id=ctx.request_id)
        if not _accepted(answer):
            raise _declined(charge, answer.action)
        return None
    if arguments.get("confirm") is True:
        return None
    raise Refusal(
        "confirmation_required",
        f"{charge.message} This host cannot ask the human (no MCP elicitation): show them this, and only "
        "once they agree call the tool again with the same arguments and confirm: true.",
        {**charge.amounts, "field": "confirm"},
    )
