"""Persistence: SQLAlchemy models, engine set-up, and keyword-only data functions."""
