"""``serve``: a view that streams a stored file, for ``SafekeeperStorage(base_url=…)``.

    path("media/<path:name>", login_required(serve), name="media"),

Who may read what is the application's decision: wrap the view accordingly.
"""

from __future__ import annotations

from typing import Any

from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest

from safekeeper.contrib.django.storage import SafekeeperStorage


def serve(request: HttpRequest, name: str, storage: SafekeeperStorage | None = None) -> Any:
    storage = storage or default_storage
    try:
        opened = storage.open(name)
    except FileNotFoundError:
        raise Http404(name) from None
    return FileResponse(opened, filename=name.rsplit("/", 1)[-1])
