"""Maintenance scripts: making and documenting the shipped models."""
