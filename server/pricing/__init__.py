"""Prices in one place: meters, and a rate card whose versions are immutable
and take effect at an instant. Other domains price usage through
`PricingService.quote` (synchronous, from an in-memory snapshot of every
version) and read a Usage proto with `PricingService.usage_from_proto`."""
