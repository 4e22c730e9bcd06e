"""KeysService: proto in, key rules, proto out; the keys' ledger extensions."""

from __future__ import annotations

from flownexus.billing.v1 import keys_pb2, keys_pb2_grpc

from server.grpc import Ctx, convert, validation
from server.keys.budgets import KeyBudgets, refused_events
from server.keys.models import BudgetLimit, BudgetUse, KeyView, Window
from server.keys.service import KeyFields, KeysService, check_key_id
from server.platform import errors
from server.platform.auth import principal
from server.registry import Registry

WINDOW_OF = {
    keys_pb2.BUDGET_WINDOW_HOUR: Window.HOUR,
    keys_pb2.BUDGET_WINDOW_DAY: Window.DAY,
    keys_pb2.BUDGET_WINDOW_MONTH: Window.MONTH,
    keys_pb2.BUDGET_WINDOW_LIFETIME: Window.LIFETIME,
}
PB_WINDOW = {w: pb for pb, w in WINDOW_OF.items()}
UPDATABLE = ("label", "budgets", "categories", "max_spend_millicredits", "expires_at")


def _budgets(items: list[keys_pb2.Budget]) -> list[BudgetLimit]:
    out = []
    for b in items:
        window = WINDOW_OF.get(b.window)
        if window is None:
            raise errors.InvalidArgument(
                f"unknown budget window {b.window}", reason="INVALID_BUDGET_WINDOW",
                metadata={"allowed": ",".join(n for n in keys_pb2.BudgetWindow.keys() if not n.endswith("UNSPECIFIED"))},
            )
        out.append(BudgetLimit(window, b.limit_millicredits))
    return out


def _categories(values: list[str]) -> list[str]:
    return [validation.category(c) or _empty_category() for c in values]


def _empty_category() -> str:
    raise errors.InvalidArgument("a category is empty", reason="INVALID_CATEGORY")


def key_pb(view: KeyView) -> keys_pb2.Key:
    return keys_pb2.Key(
        id=view.id, user_id=view.user_id, label=view.label, categories=view.categories,
        max_spend_millicredits=view.max_spend, expires_at=convert.ts(view.expires_at_us),
        create_time=convert.ts(view.created_at_us), revoke_time=convert.ts(view.revoked_at_us),
        secret_prefix=view.secret_prefix,
        budgets=budget_pbs(view.budgets),
    )


def budget_pbs(uses: list[BudgetUse]) -> list[keys_pb2.Budget]:
    """Budgets with their use, as a key's or an org member's."""
    return [
        keys_pb2.Budget(
            window=PB_WINDOW[b.window], limit_millicredits=b.limit, used_millicredits=b.used,
            remaining_millicredits=b.remaining, resets_at=convert.ts(b.resets_at_us),
        )
        for b in uses
    ]


def budget_limits(items: list[keys_pb2.Budget]) -> list[BudgetLimit]:
    """The budgets of a request (a key's or an org member's), windows checked."""
    return _budgets(items)


class KeysServicer(keys_pb2_grpc.KeysServiceServicer):
    def __init__(self, keys: KeysService) -> None:
        self.keys = keys

    async def CreateKey(self, request: keys_pb2.CreateKeyRequest, context: Ctx) -> keys_pb2.CreateKeyResponse:
        fields = KeyFields(
            label=request.label,
            budgets=_budgets(list(request.budgets)),
            categories=_categories(list(request.categories)),
            max_spend=request.max_spend_millicredits,
            expires_at_us=validation.timestamp(request.expires_at, request.HasField("expires_at"), field="expires_at"),
        )
        view, secret = await self.keys.create(
            principal(), user_id=validation.user_id(request.user_id), fields=fields,
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("CreateKey", request),
            org_id=validation.org_id(request.org_id),
        )
        return keys_pb2.CreateKeyResponse(key=key_pb(view), secret=secret)

    async def GetKey(self, request: keys_pb2.GetKeyRequest, context: Ctx) -> keys_pb2.GetKeyResponse:
        who = principal()
        # Empty, with a key's own secret: that key (an agent reading its own budget).
        key_id = request.key_id or who.key_id
        return keys_pb2.GetKeyResponse(key=key_pb(await self.keys.get(who, check_key_id(key_id))))

    async def ListKeys(self, request: keys_pb2.ListKeysRequest, context: Ctx) -> keys_pb2.ListKeysResponse:
        user = validation.user_id(request.user_id)
        size = validation.page_size(request.page_size)
        org_id = validation.org_id(request.org_id)
        sig = validation.filters_signature("keys", user, *([org_id] if org_id else []))
        after = validation.decode_page_token(request.page_token, sig, int, str)
        views = await self.keys.list(principal(), user, size + 1, tuple(after) if after else None, org_id)
        resp = keys_pb2.ListKeysResponse(keys=[key_pb(v) for v in views[:size]])
        if len(views) > size:
            last = views[size - 1]
            resp.next_page_token = validation.encode_page_token([last.created_at_us, last.id], sig)
        return resp

    async def UpdateKey(self, request: keys_pb2.UpdateKeyRequest, context: Ctx) -> keys_pb2.UpdateKeyResponse:
        paths = validation.update_mask(list(request.update_mask.paths), UPDATABLE)
        fields = KeyFields()
        if "label" in paths:
            fields.label = request.label
        if "budgets" in paths:
            fields.budgets = _budgets(list(request.budgets))
        if "categories" in paths:
            fields.categories = _categories(list(request.categories))
        if "max_spend_millicredits" in paths:
            fields.max_spend = request.max_spend_millicredits
        if "expires_at" in paths:
            fields.expires_at_us = validation.timestamp(
                request.expires_at, request.HasField("expires_at"), field="expires_at"
            ) or 0
        view = await self.keys.update(
            principal(), check_key_id(request.key_id), fields,
            request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("UpdateKey", request),
        )
        return keys_pb2.UpdateKeyResponse(key=key_pb(view))

    async def RevokeKey(self, request: keys_pb2.RevokeKeyRequest, context: Ctx) -> keys_pb2.RevokeKeyResponse:
        view = await self.keys.revoke(
            principal(), check_key_id(request.key_id), request_id=validation.request_id(request.request_id),
            fingerprint=validation.fingerprint("RevokeKey", request),
        )
        return keys_pb2.RevokeKeyResponse(key=key_pb(view))


def register(reg: Registry, service: KeysService) -> None:
    reg.servicer(keys_pb2_grpc.add_KeysServiceServicer_to_server, KeysServicer(service))
    reg.spend_guard(KeyBudgets())
    reg.ledger_extension(refused_events)
