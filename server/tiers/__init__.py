"""Tiers: Pro through Stripe subscriptions, Enterprise by admins, monthly allowances."""
