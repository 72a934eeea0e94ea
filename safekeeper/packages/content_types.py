"""The ``Content-Type`` a package member is served with, from its file name.

``mimetypes`` reads the machine's ``/etc/mime.types``, which differs between hosts and
gets some web types wrong or leaves them out (``.js`` as ``application/javascript``,
no ``.woff2``); a browser running a SCORM player needs the same answer everywhere, so
the types that matter for web content are fixed here and ``mimetypes`` fills the rest.
"""

from __future__ import annotations

import mimetypes
from functools import lru_cache
from pathlib import PurePosixPath

_WEB_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".xhtml": "application/xhtml+xml",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".xml": "application/xml",
    ".xsd": "application/xml",
    ".txt": "text/plain",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".mp3": "audio/mpeg",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".wasm": "application/wasm",
    ".pdf": "application/pdf",
}

#: Types that are text although not ``text/*``: they get ``charset=utf-8`` too.
_TEXTUAL = {"application/json", "application/xml", "application/xhtml+xml", "image/svg+xml"}

DEFAULT_TYPE = "application/octet-stream"


@lru_cache(maxsize=1024)
def content_type(member_path: str) -> str:
    """The full header value, charset included for text: ``text/html; charset=utf-8``."""
    suffix = PurePosixPath(member_path).suffix.lower()
    kind = _WEB_TYPES.get(suffix) or mimetypes.guess_type(member_path)[0] or DEFAULT_TYPE
    if kind.startswith("text/") or kind in _TEXTUAL:
        return f"{kind}; charset=utf-8"
    return kind
