"""Billing events: the outbox, alerts, webhooks."""
