"""Who is making a request: the signed-in user as the routes see them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Principal:
    user_id: int
    user_name: str
    tenant_id: int
    tenant_name: str
    role: Literal["admin", "operator", "member"]
    #: How the request authenticated: a browser session cookie or a bearer API token.
    via: Literal["session", "token"]
    #: SHA-256 of the session token (for "this session" in session lists); None for tokens.
    session_token_hash: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def is_operator(self) -> bool:
        """Operators and admins run locations, plans, gc and audit."""
        return self.role in ("admin", "operator")
