"""Temporal activities: the session workflow's only side effects."""
