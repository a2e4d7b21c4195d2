"""Data engine: runners."""
