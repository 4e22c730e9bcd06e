"""`serve --workers 2` on one PostgreSQL: a version published through one
process is known to every process before it takes effect, so both price
every instant alike."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from flownexus.billing.v1 import common_pb2, pricing_pb2, pricing_pb2_grpc

from tests.conftest import _require_postgres
from tests.harness import auth, database
from tests.pricing.helpers import ADMIN, meter, ts, us
from tests.workers import serve_workers, verify

USER = auth("uma")


async def test_every_process_has_a_version_before_it_takes_effect(tmp_path: Path) -> None:
    await _require_postgres()
    async with database("postgres", tmp_path) as url:
        async with serve_workers(url, tmp_path) as w:
            stubs = [pricing_pb2_grpc.PricingServiceStub(ch) for ch in w.chans]
            made = (await stubs[0].PublishRateCard(pricing_pb2.PublishRateCardRequest(
                meters=[meter("api.calls", "call", 150, per_units=1000)], request_id="raise"), metadata=ADMIN)).rate_card
            effective = us(made.effective_time)
            assert effective - us(made.publish_time) == 5_000_000  # "now" is after the lead time

            async def has_it(s: pricing_pb2_grpc.PricingServiceStub) -> bool:
                got = await s.ListRateCardVersions(pricing_pb2.ListRateCardVersionsRequest(), metadata=USER)
                return bool(got.versions) and got.versions[0].version == made.version

            # Every connection (spread over both processes) learns it well before its instant.
            while not all(await asyncio.gather(*(has_it(s) for s in stubs))):
                left = (effective - time.time_ns() // 1000) / 1e6
                assert left > 1, f"a process did not learn the version {5 - left:.1f} s after its publishing (5 s before its instant)"
                await asyncio.sleep(0.1)
            usage = common_pb2.Usage(meter="api.calls", quantity=1000)
            for at, version, amount in [(effective - 1, 1, 100), (effective, 2, 150)]:
                got = await asyncio.gather(*(s.EstimateCost(pricing_pb2.EstimateCostRequest(
                    usage=usage, usage_time=ts(at)), metadata=USER) for s in stubs))
                assert {(g.version, g.amount_millicredits) for g in got} == {(version, amount)}
        done = verify(url, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert b"checked rate_card_versions: 2" in done.stdout
