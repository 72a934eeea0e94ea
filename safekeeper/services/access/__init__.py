"""Accounts and sessions: who may see and change what."""
