"""Adapters: PostgreSQL (SQLAlchemy Core on asyncpg) and Kafka (aiokafka)."""
