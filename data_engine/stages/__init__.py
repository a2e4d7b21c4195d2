"""Data engine: stages."""
