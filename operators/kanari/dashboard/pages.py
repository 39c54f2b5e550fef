"""The HTML shell every view is rendered into, live or exported.

A page is this shell plus `app.js`, which draws the view from a JSON document: fetched from the server's API
when live (and refreshed from its event stream), embedded in the page when exported. One rendering path.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any

VIEWS = ("list", "detail", "drift", "lineage", "login")
STATIC = ("app.js", "app.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css", "vendor/uPlot.LICENSE")


_CURRENT = ' aria-current="page"'


def static_file(name: str) -> bytes:
    if name not in STATIC:
        raise FileNotFoundError(name)
    return resources.files("kanari.dashboard").joinpath("static", name).read_bytes()


def _embed(data: Any) -> str:
    # JSON inside <script>: "</" and "<!--" must not end or open anything; \u escapes keep it valid JSON.
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page(view: str, title: str, *, root: str, api: str = "", data: Any = None, nav: dict[str, str] | None = None,
         csrf: str = "", live: bool = True) -> str:
    """`root`: the relative or absolute path to the site root (static files, the list); `api`: this view's
    JSON endpoint when live; `data`: the embedded document when exported."""
    assert view in VIEWS
    current = {"detail": "rollout", "list": "all"}.get(view, view)
    links = "".join(
        f'<li><a href="{html.escape(href)}"{_CURRENT if label.lower() == current else ""}>{html.escape(label)}</a></li>'
        for label, href in (nav or {}).items()
    )
    embedded = f'<script id="view-data" type="application/json">{_embed(data)}</script>' if data is not None else ""
    mode = "live" if live else "export"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · Kanari</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{root}static/vendor/uPlot.min.css">
<link rel="stylesheet" href="{root}static/app.css">
</head>
<body data-view="{view}" data-api="{html.escape(api)}" data-root="{root}" data-mode="{mode}" data-csrf="{html.escape(csrf)}">
<a class="skip" href="#main">Skip to content</a>
<header><a class="brand" href="{root}{'' if live else 'index.html'}">Kanari</a>
<nav aria-label="views"><ul>{links}</ul></nav>
<span id="live" role="status" aria-live="polite">{'connecting…' if live else 'static export'}</span></header>
<main id="main" tabindex="-1"><h1>{html.escape(title)}</h1>
<p id="action-result" role="status" aria-live="polite"></p><div id="view" aria-busy="true"></div></main>
<dialog id="confirm" aria-labelledby="confirm-title"><form method="dialog">
<h2 id="confirm-title">Confirm</h2><p id="confirm-text"></p>
<div class="buttons"><button value="cancel" id="confirm-cancel">Cancel</button>
<button value="ok" id="confirm-ok" class="danger">Confirm</button></div></form></dialog>
{embedded}
<script src="{root}static/vendor/uPlot.iife.min.js"></script>
<script src="{root}static/app.js"></script>
</body></html>
"""
