"""Auto-refill (issue 4): configuration, durable jobs, the charging worker."""
