"""The HTTP side: one ASGI app (``create_app``) for the API, package serving and the
dashboard, run by ``safekeeper serve``. Routes are thin: parse, call a service, answer."""
