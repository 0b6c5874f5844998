"""`make bench` (`python -m bench`): the worker against a naive consumer and its own SQL."""
