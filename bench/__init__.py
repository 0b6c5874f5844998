"""`stock bench`: the worker measured against a naive consumer and its own SQL, per scenario."""
