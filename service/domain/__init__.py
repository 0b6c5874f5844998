"""Pure domain: the reservation state table and stock arithmetic. No I/O here.

`ledger.StockLedger` is the one place the rules of CONTRACT.md live; adapters load
its state, entrypoints feed it commands, and the writer persists what it decided.
"""
