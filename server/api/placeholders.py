"""Services whose issues have not landed yet answer UNIMPLEMENTED with an
ErrorInfo, never a fake success."""

from __future__ import annotations

from typing import Any

from flownexus.billing.v1 import payments_pb2_grpc, refill_pb2_grpc

from server.api.servicers import not_implemented
from server.auth import principal


class PaymentsPlaceholder(payments_pb2_grpc.PaymentsServiceServicer):
    async def CreatePaymentLink(self, request: Any, context: Any) -> Any:
        principal()
        raise not_implemented("CreatePaymentLink")

    async def GetPayment(self, request: Any, context: Any) -> Any:
        principal()
        raise not_implemented("GetPayment")

    async def ListPayments(self, request: Any, context: Any) -> Any:
        principal()
        raise not_implemented("ListPayments")


class RefillPlaceholder(refill_pb2_grpc.RefillServiceServicer):
    async def ConfigureAutoRefill(self, request: Any, context: Any) -> Any:
        principal()
        raise not_implemented("ConfigureAutoRefill")

    async def GetAutoRefill(self, request: Any, context: Any) -> Any:
        principal()
        raise not_implemented("GetAutoRefill")

    async def CreateSetupLink(self, request: Any, context: Any) -> Any:
        principal()
        raise not_implemented("CreateSetupLink")
