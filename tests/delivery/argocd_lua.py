"""Run Argo CD resource customizations (health.lua, actions) under lupa the way Argo CD runs them.

Mirrors argoproj/argo-cd util/lua/lua.go and layeh/gopher-json, which Argo CD uses:
- Lua 5.1 semantics (Argo CD embeds gopher-lua, a Lua 5.1 VM): lupa's lua51 runtime.
- The sandbox of custom scripts: only the base, table and package libraries plus a "safe" os library with
  `time` and `date` (util/lua/oslib_safe.go). No string, math, io or debug library, and no string methods.
- A 1-second budget per script (Argo CD sets a context timeout).
- The object reaches the script as the global `obj`, converted like `decodeValue`: maps become tables with
  string keys, lists become arrays, JSON null becomes nil (the key disappears), numbers become Lua numbers.
- The script's last return value must be a table; it is encoded to JSON like gopher-json's `Encode`: an empty
  table is `[]`, a table whose first key is a number must be a dense 1..n array, otherwise every key must be
  a string. Health: the JSON is unmarshalled into {status, message} and an unknown status becomes Unknown
  with "Lua returned an invalid health status". Actions: an object is an old-style patch of the source
  object, cleaned by `cleanReturnedObj` (an empty table the script returned where the input had a map is the
  map again); an array is a list of impacted resources. Discovery: `[]` means no actions; otherwise a map of
  action name to an empty table or a ResourceAction-shaped table.
The only departure: `os.time`/`os.date` read an injectable clock, so expected outputs can be exact (Argo CD's
own test runner instead normalises time-stamped fields before comparing).
"""

from __future__ import annotations

import json
import time as _time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import yaml

VALID_HEALTH = ("Unknown", "Progressing", "Suspended", "Healthy", "Degraded", "Missing")
TIMEOUT_SECONDS = 1.0


class LuaScriptError(Exception):
    """The script failed, returned something Argo CD rejects, or ran out of time."""


class _NoTimestamps(yaml.SafeLoader):
    """YAML as sigs.k8s.io/yaml reads it: timestamps stay strings (they go through JSON)."""


_NoTimestamps.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_NoTimestamps)  # noqa: S506 - a SafeLoader subclass


# gopher-lua's strftime (oslib_safe.go cDateFlagToGo): only these conversions; others are copied verbatim.
_STRFTIME = {
    "a": "%a", "A": "%A", "b": "%b", "B": "%B", "c": "%d %b %y %H:%M %Z", "d": "%d", "F": "%Y-%m-%d",
    "H": "%H", "I": "%I", "m": "%m", "M": "%M", "p": "%p", "S": "%S", "x": "%H/%M/%S", "X": "%H:%M:%S",
    "y": "%y", "Y": "%Y", "z": "%z", "Z": "%Z",
}


def _strftime(t: datetime, fmt: str) -> str:
    out, i = [], 0
    while i < len(fmt):
        c = fmt[i]
        if c == "%" and i + 1 < len(fmt):
            flag = fmt[i + 1]
            if flag == "%":
                out.append("%")
            elif flag == "w":
                out.append(str((t.weekday() + 1) % 7))
            elif flag in _STRFTIME:
                out.append(t.strftime(_STRFTIME[flag]))
            else:
                out.append("%" + flag)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


@dataclass
class Clock:
    """What the safe os library reads; `now` None means the real time."""

    now: datetime | None = None

    def current(self) -> datetime:
        return self.now or datetime.now(UTC)


class ArgoLua:
    def __init__(self, clock: Clock | None = None):
        self.clock = clock or Clock()

    # ------------------------------------------------------------------ sandbox
    def _runtime(self) -> tuple[Any, Any]:
        rt = lua51.LuaRuntime(unpack_returned_tuples=True, register_eval=False, register_builtins=False)
        g = rt.globals()
        clock = self.clock

        def os_time(tbl: Any = None) -> int:
            if tbl is None:
                return int(clock.current().timestamp())
            fields = {k: tbl[k] for k in ("year", "month", "day", "hour", "min", "sec")}
            t = datetime(
                int(fields["year"]), int(fields["month"]), int(fields["day"]),
                int(fields["hour"] if fields["hour"] is not None else 12),
                int(fields["min"] or 0), int(fields["sec"] or 0),
            )
            return int(t.astimezone().timestamp())

        def os_date(fmt: str = "%c", when: Any = None) -> Any:
            t = clock.current().astimezone()
            if fmt.startswith("!"):
                t = clock.current().astimezone(UTC)
                fmt = fmt.lstrip("!")
            if when is not None:
                t = datetime.fromtimestamp(int(when)).astimezone()
            if fmt.startswith("*t"):
                return rt.table_from({
                    "year": t.year, "month": t.month, "day": t.day, "hour": t.hour, "min": t.minute,
                    "sec": t.second, "wday": (t.weekday() + 1) % 7 + 1, "yday": 0, "isdst": False,
                })
            return _strftime(t, fmt)

        safe_os = rt.table_from({"time": os_time, "date": os_date})
        deadline = _time.monotonic() + TIMEOUT_SECONDS

        def over_budget() -> bool:
            return _time.monotonic() > deadline

        # A count hook stands in for Argo CD's context timeout; it is installed before `debug` goes away.
        rt.execute(
            "local over = ...; debug.sethook(function() if over() then error('context deadline exceeded') end end, '', 10000)",
            over_budget,
        )
        # No string library: gopher-lua sets the string metatable only in OpenString.
        rt.execute("debug.setmetatable('', nil)")
        for lib in ("string", "math", "io", "debug", "coroutine"):
            g[lib] = None
            g.package.loaded[lib] = None
        g.os = safe_os
        g.package.loaded.os = safe_os
        return rt, g

    @staticmethod
    def _to_lua(rt: Any, value: Any) -> Any:
        if isinstance(value, dict):
            tbl = rt.table()
            for k, v in value.items():
                if v is not None:
                    tbl[str(k)] = ArgoLua._to_lua(rt, v)
            return tbl
        if isinstance(value, list):
            tbl = rt.table()
            n = 0
            for v in value:
                if v is not None:  # gopher-lua's Append skips nil
                    n += 1
                    tbl[n] = ArgoLua._to_lua(rt, v)
            return tbl
        if isinstance(value, bool | str):
            return value
        if isinstance(value, int | float):
            return float(value)
        raise TypeError(f"cannot pass {type(value).__name__} to Lua")

    @staticmethod
    def _from_lua(value: Any, lua_type: Any) -> Any:
        """gopher-json's Encode, producing Python values instead of JSON text."""
        kind = lua_type(value)
        if kind == "table":
            items = list(value.items())
            if not items:
                return []
            first = items[0][0]
            if isinstance(first, int | float) and not isinstance(first, bool):
                out = []
                for expected, (k, v) in enumerate(items, start=1):
                    if not isinstance(k, int | float) or isinstance(k, bool):
                        raise LuaScriptError("cannot encode mixed or invalid key types")
                    if k != expected:
                        raise LuaScriptError("cannot encode sparse array")
                    out.append(ArgoLua._from_lua(v, lua_type))
                return out
            if isinstance(first, str):
                obj = {}
                for k, v in items:
                    if not isinstance(k, str):
                        raise LuaScriptError("cannot encode mixed or invalid key types")
                    obj[k] = ArgoLua._from_lua(v, lua_type)
                return obj
            raise LuaScriptError("cannot encode mixed or invalid key types")
        if kind in ("nil", "boolean", "string"):
            return value
        if kind == "number":
            return int(value) if float(value).is_integer() else float(value)
        raise LuaScriptError(f"cannot encode {kind} to JSON")

    def run(self, script: str, obj: dict[str, Any]) -> Any:
        """The script's return value as Argo CD's JSON encoding of it (Python values)."""
        rt, g = self._runtime()
        lua_type = g.type
        g.obj = self._to_lua(rt, json.loads(json.dumps(obj)))
        try:
            result = rt.execute(script)
        except lupa_errors() as exc:
            raise LuaScriptError(str(exc)) from None
        if isinstance(result, tuple):
            result = result[-1] if result else None
        if lua_type(result) != "table":
            raise LuaScriptError(f"expect table output from Lua script, not {lua_type(result)}")
        return self._from_lua(result, lua_type)

    # ------------------------------------------------------------------ Argo CD's three entry points
    def health(self, script: str, obj: dict[str, Any]) -> dict[str, str]:
        out = self.run(script, obj)
        if not isinstance(out, dict):
            raise LuaScriptError("json: cannot unmarshal array into Go value of type health.HealthStatus")
        status, message = out.get("status", ""), out.get("message", "")
        if not isinstance(status, str) or not isinstance(message, str):
            raise LuaScriptError("json: cannot unmarshal non-string into health.HealthStatus field")
        if status not in VALID_HEALTH:
            return {"status": "Unknown", "message": "Lua returned an invalid health status"}
        return {"status": status, "message": message}

    def action(self, script: str, obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """(operation, resource) pairs; an old-style object result is one patch of the source object."""
        out = self.run(script, obj)
        if isinstance(out, list):
            if not out:
                raise LuaScriptError("Lua output was not a valid json object or array")
            impacted = []
            for item in out:
                if not isinstance(item, dict) or item.get("operation") not in ("patch", "create"):
                    raise LuaScriptError(f"unsupported impacted resource: {item!r}")
                resource = item.get("resource")
                if item["operation"] == "patch":
                    resource = clean_returned_obj(resource, obj)
                impacted.append((item["operation"], resource))
            return impacted
        return [("patch", clean_returned_obj(out, obj))]

    def discovery(self, script: str, obj: dict[str, Any]) -> list[dict[str, Any]]:
        out = self.run(script, obj)
        if out == []:
            return []
        if not isinstance(out, dict):
            raise LuaScriptError("discovery must return a map of action name to action")
        actions = []
        for name, value in out.items():
            action: dict[str, Any] = {"name": name, "disabled": False}
            if isinstance(value, dict):
                unknown = set(value) - {"disabled", "iconClass", "displayName", "params"}
                if unknown:
                    raise LuaScriptError(f"action {name}: unknown fields {sorted(unknown)}")
                action.update(value)
            actions.append(action)
        return sorted(actions, key=lambda a: a["name"])


def lupa_errors() -> tuple[type[BaseException], ...]:
    return (lua51.LuaError, lua51.LuaSyntaxError)


def clean_returned_obj(new: Any, old: Any) -> Any:
    """util/lua/lua.go cleanReturnedObj: an empty array where the input had a map is the map again."""
    if not isinstance(new, dict) or not isinstance(old, dict):
        return new
    for key, old_value in old.items():
        if key not in new:
            continue
        new_value = new[key]
        if isinstance(new_value, dict) and isinstance(old_value, dict):
            new[key] = clean_returned_obj(new_value, old_value)
        elif isinstance(new_value, list):
            if isinstance(old_value, dict) and not new_value:
                new[key] = old_value
            elif isinstance(old_value, list):
                new[key] = _clean_returned_array(new_value, old_value)
    return new


def _clean_returned_array(new: list[Any], old: list[Any]) -> list[Any]:
    for i, new_value in enumerate(new):
        old_value = old[i] if i < len(old) else None
        if isinstance(new_value, dict) and isinstance(old_value, dict):
            new[i] = clean_returned_obj(new_value, old_value)
        elif isinstance(new_value, list) and isinstance(old_value, list):
            new[i] = _clean_returned_array(new_value, old_value)
    return new
