"""Log format of Kanari's processes: KANARI_LOG_FORMAT=json (the chart's default; one JSON object per line for
Fluent Bit / CloudWatch) or text. The controller hands the choice to kopf (kopf.LogFormat.JSON); the drift
monitor and the receiver use python-json-logger, the formatter kopf itself uses."""

from __future__ import annotations

import logging
import os

ENV = "KANARI_LOG_FORMAT"
FORMATS = ("json", "text")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_format(explicit: str | None = None) -> str:
    value = (explicit or os.environ.get(ENV) or "text").strip().lower()
    if value not in FORMATS:
        raise ValueError(f"{ENV}: {value!r} is not one of {', '.join(FORMATS)}")
    return value


def configure(level: int = logging.INFO, fmt: str | None = None) -> None:
    """The root logger of a service process, in the chosen format."""
    handler = logging.StreamHandler()
    if log_format(fmt) == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"levelname": "level", "asctime": "time", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
