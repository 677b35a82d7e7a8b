"""Temporal workflows: one durable workflow per work session."""
