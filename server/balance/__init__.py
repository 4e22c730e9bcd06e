"""Balances: CheckBalance, GetBalance and the live WatchBalance stream (with its
fan-out across replicas)."""
