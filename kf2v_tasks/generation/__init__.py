"""One video as plain async functions: frames, the ledger, submit, persist."""
