"""Admin: operator tools (adjustments, reversals, account flags) and their audit trail."""
