"""Adapters for the frameworks applications already run (optional extras)."""
