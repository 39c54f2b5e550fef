"""KFP artifacts that stand for data kept elsewhere in S3 (the splits, SageMaker's model.tar.gz).

KFP v2's launcher gives every output artifact a URI under the pipeline root and, when the step ends,
uploads the artifact's local path to exactly that URI; a URI the step rewrote to another bucket or
prefix makes the upload fail (the launcher only writes under the pipeline root). So a step never
changes `artifact.uri`: it writes a small JSON pointer at `artifact.path` (uploaded by the launcher,
readable in the KFP UI) and records the S3 location in the artifact's metadata, which is what the
next steps read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kfp_pipelines.errors import StepFailed

S3_URI = "s3_uri"


def publish(artifact: Any, s3_uri: str, **metadata: Any) -> None:
    """Point `artifact` at `s3_uri` without touching the URI KFP assigned it."""
    path = Path(artifact.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({S3_URI: s3_uri, **metadata}, indent=2, sort_keys=True, default=str))
    artifact.metadata.update({S3_URI: s3_uri, **metadata})


def s3_uri(artifact: Any) -> str:
    """The S3 location an upstream step published; an artifact without one is a broken pipeline."""
    uri = (artifact.metadata or {}).get(S3_URI)
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise StepFailed(f"input artifact {getattr(artifact, 'name', '?')} carries no {S3_URI} in its metadata "
                         f"(uri {artifact.uri}); was it produced by a Kanari step?")
    return uri
