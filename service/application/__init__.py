"""Use cases: one transaction each, composed from the domain and the adapters."""
