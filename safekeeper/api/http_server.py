"""How ``safekeeper serve`` runs uvicorn: the settings that bound what a client can
make the server hold or believe.

- **Forwarded headers.** uvicorn believes ``X-Forwarded-For`` from 127.0.0.1 unless
  told otherwise; anything on the host could then pick its client address and dodge
  the per-address sign-in throttle. Here proxy headers are off unless
  ``server.trusted_proxies`` names the proxies, and then only theirs count.
- **Header size.** uvicorn's default parser (httptools) buffers a header line of any
  length; h11 refuses a header block past ``h11_max_incomplete_event_size`` while it
  is still arriving (431), so ``server.max_header_size`` bounds memory per connection.
  The header count is checked in the app (``api.app``), which sees the parsed list.
- **Server header.** No ``server: uvicorn``: the software and version are no one's
  business.
"""

from __future__ import annotations

from typing import Any

from safekeeper.config_server import ServerConfig


def uvicorn_options(settings: ServerConfig) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` (besides app, host, port)."""
    trusted = list(settings.trusted_proxies)
    return {
        "http": "h11",
        "h11_max_incomplete_event_size": settings.max_header_size,
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or [],
        "server_header": False,
        "log_level": "warning",
    }
