"""The embedded development stack: PostgreSQL from a wheel and the tansu broker.

Used by `stock dev` (and so `make run`) and by the test fixtures. Nothing here is
needed in production, where STOCK_DATABASE_URL and STOCK_KAFKA_BOOTSTRAP_SERVERS
point at real servers.
"""
