"""Deleting copies safely: the plan, gc, re-confirmation, and what pins copies."""
