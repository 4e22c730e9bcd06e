"""The double-entry credits ledger: immutable transfers between accounts,
cached balances updated in the same transaction, lots and holds."""
