"""The one AWS client factory: every boto3 client Kanari makes (controller, monitor, CLI, pipeline steps,
demo stand-ins) comes from here.

Region: AWS_REGION (what the chart, IRSA's webhook and every other AWS SDK set), else boto3's own chain
(AWS_DEFAULT_REGION, the profile). boto3 alone reads only AWS_DEFAULT_REGION, which is why `kanari models
list` used to ignore AWS_REGION. Endpoint: AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_<SERVICE> (LocalStack, moto),
read by botocore itself, so nothing here knows whether it talks to AWS. Retries: botocore's retry modes
(AWS_RETRY_MODE / AWS_MAX_ATTEMPTS honoured; adaptive and 8 attempts unless set).
"""

from __future__ import annotations

import os
import re
from typing import Any

DEFAULT_RETRY_MODE = "adaptive"
DEFAULT_MAX_ATTEMPTS = 8
_ARN = re.compile(r"^arn:aws[a-z-]*:[a-z0-9-]+:(?P<region>[a-z0-9-]*):")


def region(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def region_of_arn(arn: str) -> str | None:
    m = _ARN.match(arn or "")
    return (m.group("region") or None) if m else None


def retry_config(max_attempts: int | None = None, **timeouts: float) -> Any:
    from botocore.config import Config

    mode = os.environ.get("AWS_RETRY_MODE", DEFAULT_RETRY_MODE)
    attempts = max_attempts or int(os.environ.get("AWS_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS))
    return Config(retries={"mode": mode, "max_attempts": attempts}, **timeouts)


def client(service: str, *, region_name: str | None = None, session: Any = None, config: Any = None) -> Any:
    """A boto3 client; raises botocore's NoRegionError when no region is known (callers name the fix)."""
    import boto3

    maker = session if session is not None else boto3.session.Session()
    return maker.client(service, region_name=region(region_name), config=config or retry_config())
