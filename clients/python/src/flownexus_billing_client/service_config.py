"""The gRPC service config every client should use (service_config.json,
shipped in this package): retry UNAVAILABLE, with exponential backoff, on the
reads and on the mutations (each carries a request_id, so the server applies a
resent one once). Clients in other languages load the same JSON file.

    channel = grpc.aio.insecure_channel(target, options=channel_options())
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

# gRPC clamps maxAttempts to 5, the first attempt included.
MAX_ATTEMPTS_LIMIT = 5


@cache
def _packaged() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("service_config.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def service_config(*, max_attempts: int | None = None, initial_backoff_seconds: float | None = None) -> dict[str, Any]:
    """The packaged config, optionally with another attempt cap or first backoff.
    `max_attempts=1` turns retries off."""
    config = copy.deepcopy(_packaged())
    for method_config in config["methodConfig"]:
        policy = method_config.get("retryPolicy")
        if policy is None:
            continue
        if max_attempts is not None:
            if max_attempts <= 1:
                del method_config["retryPolicy"]
                continue
            policy["maxAttempts"] = min(max_attempts, MAX_ATTEMPTS_LIMIT)
        if initial_backoff_seconds is not None:
            policy["initialBackoff"] = f"{max(initial_backoff_seconds, 0.001):.3f}s"
    return config


def channel_options(**overrides: Any) -> list[tuple[str, Any]]:
    """Channel options that install the service config and turn retries on."""
    return [("grpc.service_config", json.dumps(service_config(**overrides))), ("grpc.enable_retries", 1)]
