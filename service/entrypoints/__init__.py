"""Thin entrypoints: the FastStream subscriber and the CLI. No rules live here."""
