"""Payments: Checkout purchases, the Stripe gateway and customers, verified webhooks."""
