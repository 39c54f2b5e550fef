"""JSON merge patches (RFC 7386), the one implementation Kanari uses: applying one (the API emulators), the one
that turns an object into another (the pipeline's ModelDeployment update), and the three-way patch the
controller applies to what it owns.

Hand-written because the three-way part is Kanari's own policy; applying and diffing are a few lines each and
the library alternatives (json-merge-patch) differ on lists and on null handling at the top level.
"""

from __future__ import annotations

import copy
from typing import Any


def apply(target: Any, patch: Any) -> Any:
    """`target` with `patch` applied: dicts merge, null removes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply(out.get(key), value)
    return out


def diff(current: Any, desired: Any) -> Any:
    """The merge patch that turns `current` into exactly `desired` (keys only in `current` become null)."""
    if not isinstance(current, dict) or not isinstance(desired, dict):
        return desired
    patch: dict[str, Any] = {k: None for k in current if k not in desired}
    for key, value in desired.items():
        if key not in current:
            patch[key] = value
        elif current[key] != value:
            patch[key] = diff(current[key], value)
    return patch


def three_way(last_applied: Any, desired: Any, current: Any) -> dict[str, Any]:
    """The patch that makes `current` contain `desired` and drops what we set last time and no longer want.

    Keys neither in `desired` nor in `last_applied` belong to someone else (KServe's defaults, another
    controller's annotations) and are left alone: kubectl's client-side apply, with `last_applied` kept by the
    caller. Empty when nothing needs writing.
    """
    out = _three_way(last_applied, desired, current)
    return {} if out is _SAME else out


_SAME: Any = object()


def _three_way(last: Any, desired: Any, current: Any) -> Any:
    if not (isinstance(desired, dict) and isinstance(current, dict)):
        return _SAME if desired == current else desired
    last = last if isinstance(last, dict) else {}
    out: dict[str, Any] = {}
    for key, value in desired.items():
        sub = _three_way(last.get(key), value, current[key]) if key in current else value
        if sub is not _SAME:
            out[key] = sub
    for key in last:
        if key not in desired and key in current:
            out[key] = None
    return out if out else _SAME
