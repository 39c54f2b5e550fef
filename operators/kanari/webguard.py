"""What the drift monitor and the retraining receiver put between an untrusted caller and their logic:
full, bounded body reads (413 past the limit, 408 past the time limit), a header timeout, JSON parsing
that refuses inputs built to exhaust the parser (deep nesting, integers of hundreds of digits), and the
server start-up with optional TLS.

aiohttp's own `content.read(n)` returns what happens to be buffered, so a body arriving in more than one
TCP segment was cut short; `client_max_size` only guards `request.read()`, which reads without a time
limit. Hence the loop here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI imports this module for its flags; aiohttp, asyncio and ssl load only when serving
    import ssl

    from aiohttp import web

HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
MAX_JSON_DEPTH = 64
# Integers past this many digits are refused: Python would parse them (up to 4300 digits) but nothing
# downstream can use them, and float conversion of 10**400 raises OverflowError deep in numpy.
MAX_INT_DIGITS = 300

def bearer_token(flag: str, path: str | None, env: str, *, required: str = "") -> str:
    """A bearer token from a file (a mounted Secret) named by `flag`, else the variable `env`; "" when neither
    holds one, unless `required` says why that is refused. An unreadable or empty file is an error naming the
    flag, never a fallback to the variable (a mounted Secret that did not arrive must not go unnoticed)."""
    import os
    from pathlib import Path

    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise ValueError(f"{flag}: unreadable ({exc.strerror or type(exc).__name__})") from None
        except UnicodeDecodeError:
            raise ValueError(f"{flag}: the file is not UTF-8 text") from None
        if not token:
            raise ValueError(f"{flag}: the file is empty")
        where = flag
    else:
        token = os.environ.get(env, "").strip()
        if not token and required:
            raise ValueError(f"no bearer token: pass {flag} or set {env}; {required}")
        where = env
    # A bearer token travels in a header as visible ASCII (RFC 6750): one with a line break, a space or a
    # non-ASCII letter inside cannot be sent, so a server holding it would refuse every caller, and a client
    # would fail in the HTTP library. Said at start, by name.
    if any(not "!" <= c <= "~" for c in token):
        raise ValueError(f"{where}: the token holds whitespace, a control or a non-ASCII character (a bearer token "
                         "is visible ASCII, one line)")
    return token


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)


@dataclass
class BodyRejected(Exception):
    """The body was not read: `status` is 408, 413 or 400 and `detail` says why (no internal names)."""

    status: int
    outcome: str
    detail: str


async def read_body(request: web.Request, limit: int, timeout: float = BODY_TIMEOUT) -> bytes:
    """The whole body, streamed, up to `limit` bytes; BodyRejected beyond that or past `timeout`."""
    import asyncio

    from aiohttp.http_exceptions import HttpProcessingError

    declared = request.content_length
    if declared is not None and declared > limit:
        raise BodyRejected(413, "oversized", f"body of {declared} bytes is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise BodyRejected(413, "oversized", f"body larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyRejected(408, "timeout", f"body not received within {timeout:g}s") from None
    except (ConnectionError, asyncio.IncompleteReadError, HttpProcessingError):
        raise BodyRejected(400, "malformed", "the body could not be read") from None
    return b"".join(chunks)


def nesting_depth(raw: bytes | str) -> int:
    """How deeply JSON arrays/objects nest in `raw` (strings skipped), in linear time and without recursion."""
    import numpy as np

    data = raw.encode() if isinstance(raw, str) else raw
    stripped = np.frombuffer(_STRINGS.sub(b'""', data), dtype=np.uint8)
    if not stripped.size:
        return 0
    opens = (stripped == ord("[")) | (stripped == ord("{"))
    closes = (stripped == ord("]")) | (stripped == ord("}"))
    return int(np.cumsum(opens.astype(np.int32) - closes.astype(np.int32)).max(initial=0))


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits is out of range")
    return int(text)


def loads(raw: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads for untrusted input; ValueError (with a short reason) for anything unusable."""
    if nesting_depth(raw) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(raw, parse_int=_bounded_int)
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8") from None
    except RecursionError:  # unreachable after the depth check; kept so a parser change cannot 500
        raise ValueError(f"JSON nested deeper than {max_depth} levels") from None


def ssl_context(cert_file: str | None, key_file: str | None) -> ssl.SSLContext | None:
    """A server TLS context from a mounted certificate (cert-manager Secret or any kubernetes.io/tls)."""
    if not cert_file and not key_file:
        return None
    if not (cert_file and key_file):
        raise ValueError("--tls-cert-file and --tls-key-file go together")
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"TLS certificate: cannot load: {type(exc).__name__}") from None
    return ctx


def run_app(
    app: web.Application,
    host: str,
    port: int,
    header_timeout: float = HEADER_TIMEOUT,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve `app`. aiohttp closes a connection whose request has not fully arrived (or that sits idle)
    after keepalive_timeout, armed when the connection opens: that is the header timeout, so a client
    sending headers a byte at a time (slowloris) is cut off instead of holding a connection."""
    from aiohttp import web

    web.run_app(
        app, host=host, port=port, print=None, access_log=None, ssl_context=tls, keepalive_timeout=header_timeout,
    )


def add_arguments(parser: Any) -> None:
    """Flags both services share."""
    parser.add_argument("--header-timeout", type=float, default=HEADER_TIMEOUT,
                        help="seconds a connection may take to send its request headers (or sit idle)")
    parser.add_argument("--body-timeout", type=float, default=BODY_TIMEOUT,
                        help="seconds a request may take to send its body (408 past it)")
    parser.add_argument("--tls-cert-file", help="serve HTTPS with this certificate (PEM); needs --tls-key-file")
    parser.add_argument("--tls-key-file", help="the certificate's private key (PEM)")
