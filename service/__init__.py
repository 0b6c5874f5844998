"""The stock reservation worker."""
