"""Domain services: the rules. Servicers call them; they call the ledger."""
