"""Plugs the optional domains (payments, refill, tiers) into the App. Each
domain's issue adds its line here."""

from __future__ import annotations

from server.app import App


def build(app: App) -> App:
    return app
