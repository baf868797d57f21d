"""Chaos harness (cluster control, nemeses, histories, checkers, reports). Not built yet."""
