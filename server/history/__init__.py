"""History: the transaction list and the spending report."""
