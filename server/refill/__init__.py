"""Auto-refill: configuration, durable jobs, the charging worker."""
