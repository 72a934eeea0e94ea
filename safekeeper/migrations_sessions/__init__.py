"""Migrations of the sessions table; ``HEAD`` names the newest one."""

HEAD = "s0001"
