"""`kanari labels push FILE NAME`: send delayed ground truth to the drift monitor's label endpoint.

FILE is a label file as the S3 label drop takes it (`.jsonl`: one {"id", "label"} per line; `.csv`: id,label
columns); it is checked whole first (a bad row is named with its field, nothing is sent), then posted in batches
to `POST <monitor>/v1/labels/<namespace>/<name>` with the bearer token. A batch sent twice is not counted twice
(the monitor's join store takes an id once).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kanari.cli.common import CliError
from kanari.webguard import bearer_token

BATCH = 2000
TOKEN_ENV = "KANARI_LABELS_TOKEN"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("labels", help="delayed ground truth for the drift monitor")
    sub = p.add_subparsers(dest="labels_command", metavar="COMMAND")
    push = sub.add_parser("push", help="send a label file (.jsonl or .csv) to the monitor's label endpoint")
    push.add_argument("file", help="labels: .jsonl ({\"id\", \"label\"} per line) or .csv (id,label)")
    push.add_argument("name", help="ModelDeployment name")
    push.add_argument("-n", "--namespace", default="default", help="its namespace")
    push.add_argument("--monitor", required=True, help="the drift monitor's URL, e.g. https://kanari-drift-monitor:8080")
    push.add_argument("--token-file", help=f"file holding the bearer token (default: ${TOKEN_ENV})")
    push.add_argument("--task", choices=("binary", "regression"), default="binary",
                      help="binary labels must be 0 or 1 (checked before anything is sent)")
    push.add_argument("--ca-file", help="CA bundle that signed the monitor's certificate (https)")
    push.set_defaults(func=cmd_push)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def cmd_push(args: argparse.Namespace) -> int:
    import httpx

    from kanari.monitor.labeldrop import parse_file

    path = Path(args.file)
    if path.suffix not in (".jsonl", ".csv"):
        raise CliError(f"{args.file}: a label file is .jsonl or .csv")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CliError(f"{args.file}: unreadable ({exc.strerror})") from None
    try:
        pairs = parse_file(path.name, raw, args.task)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    url = f"{args.monitor.rstrip('/')}/v1/labels/{args.namespace}/{args.name}"
    try:
        token = bearer_token("--token-file", args.token_file, TOKEN_ENV, required="the monitor takes no label unsigned")
    except ValueError as exc:
        raise CliError(str(exc)) from None
    headers = {"Authorization": f"Bearer {token}"}
    accepted = joined = 0
    with httpx.Client(timeout=30, verify=args.ca_file or True) as client:
        for i in range(0, len(pairs), BATCH):
            body = {"labels": [{"id": ident, "label": label} for ident, label in pairs[i:i + BATCH]]}
            try:
                resp = client.post(url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                raise CliError(f"{url}: {type(exc).__name__}: {exc}; {accepted} labels were sent before") from None
            try:
                answer = resp.json()
            except ValueError:
                answer = {}
            if resp.status_code != 200:
                detail = answer.get("error") if isinstance(answer, dict) else None
                raise CliError(f"{url}: HTTP {resp.status_code} {detail or resp.reason_phrase}; "
                               f"{accepted} labels were sent before (sending the file again counts none twice)")
            accepted += int(answer.get("accepted", 0))
            joined += int(answer.get("joined", 0))
    print(f"{accepted} labels sent to {args.namespace}/{args.name}; {joined} joined a logged prediction now "
          "(the rest wait for theirs)", file=sys.stdout)
    return 0
