"""The player on the package origin: ``/l/<capability>`` frames the package's launch
page and provides the SCORM runtime (``runtime.js``: ``window.API`` and
``window.API_1484_11``), and ``/r/<capability>/commit`` stores what the content
committed in the viewer's attempt (``services.packaging.attempts``).

The player and the content share the package origin, so the content finds the API by
the usual walk up ``parent``/``opener``; neither can reach the dashboard. A commit is
authorised only by the capability — the same one that lets the viewer load the
package — and writes only that viewer's attempt at that package key.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from urllib.parse import quote

from safekeeper.archive import Archive
from safekeeper.errors import PackageRejected
from safekeeper.packages import scorm
from safekeeper.packages.cache import PackageCache
from safekeeper.packages.capabilities import RefTarget
from safekeeper.packages.lookup import PackageInfo
from safekeeper.packages.manifest import Item, parse_manifest
from safekeeper.services.packaging import attempts

HERE = Path(__file__).parent
RUNTIME_JS = (HERE / "runtime.js").read_bytes()
#: The player page's own policy (the content frame has the package's).
PLAYER_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-src 'self'; connect-src 'self'; form-action 'none'; "
    "base-uri 'none'; object-src 'none'"
)
_MANIFEST = "imsmanifest.xml"
_MAX_DEPTH = 4


def items(cache: PackageCache, info: PackageInfo) -> tuple[Item, ...]:
    """The default organization's items, hrefs from the package root (blocking I/O)."""
    if info.kind == "html":
        return ()
    tree = cache.tree_for(info.sha256)
    for depth in range(_MAX_DEPTH + 1):
        found = sorted(tree.glob("/".join(["*"] * depth + [_MANIFEST])))
        if found:
            manifest = found[0]
            root = manifest.parent.relative_to(tree).as_posix()
            prefix = "" if root == "." else root + "/"
            try:
                parsed = parse_manifest(manifest.read_bytes(), manifest.name)
            except PackageRejected:
                return ()
            return tuple(
                Item(i.identifier, i.title, prefix + i.href, i.launch_data) for i in parsed.items
            )
    return ()


def page(
    archive: Archive,
    capability: str,
    target: RefTarget,
    info: PackageInfo,
    user_id: int,
    user_name: str,
    found_items: tuple[Item, ...],
) -> bytes:
    """The player page for this launch (blocking: reads the attempt)."""
    state = attempts.launch_state(archive, user_id, target.namespace, target.key)
    first = found_items[0] if found_items else None
    launch = {
        "version": info.kind,
        "commit_url": f"/r/{capability}/commit",
        "state": state.data,
        "entry": state.entry,
        "total_time_12": scorm.total_time_12(state.total_seconds),
        "total_time_2004": scorm.total_time_2004(state.total_seconds),
        "learner_id": str(user_id),
        "learner_name": user_name,
        "launch_data": first.launch_data if first is not None else "",
        "item": first.identifier if first is not None else None,
    }
    # Inside <script type="application/json">: no "</" may close the element early.
    launch_json = json.dumps(launch).replace("</", "<\\/")
    base = f"/c/{capability}/"
    entry = base + quote(info.entry)
    listing = ""
    if len(found_items) > 1:
        current = ' aria-current="page"'
        links = "".join(
            f'<li><a href="{html.escape(base + quote(i.href, safe="/?=&"))}"'
            f' data-item="{html.escape(i.identifier)}"'
            f' data-launch-data="{html.escape(i.launch_data or "")}"'
            f"{current if n == 0 else ''}>{html.escape(i.title or i.identifier)}</a></li>"
            for n, i in enumerate(found_items)
        )
        listing = f'<nav id="sk-items"><ol>{links}</ol></nav>'
        entry = base + quote(found_items[0].href, safe="/?=&")
    title = html.escape(info.title or target.key)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="referrer" content="no-referrer">
<style>
html, body {{ margin: 0; height: 100%; font-family: system-ui, sans-serif; }}
body {{ display: flex; }}
#sk-items {{ width: 14rem; overflow: auto; border-right: 1px solid #ccc; font-size: .9rem; }}
#sk-items [aria-current] {{ font-weight: bold; }}
#sk-content {{ flex: 1; border: 0; height: 100%; }}
</style>
<script type="application/json" id="sk-launch">{launch_json}</script>
<script src="/_sk/runtime.js"></script>
</head><body>{listing}<iframe id="sk-content" name="sk-content" title="{title}"
src="{html.escape(entry)}"></iframe></body></html>
""".encode()
