"""KServe payload-logger CloudEvents: what the logger sends, and the rows inside.

KServe's logger (pkg/logger/worker.go) posts each request and each response as a CloudEvent in binary
mode: `ce-id` is the request id both halves share, `ce-type` says which half, and the extensions
`inferenceservicename`, `namespace`, `component`, `endpoint` ("default" or "canary"), `metadata` (JSON
object: metadataHeaders name -> list of values) and `annotations` (JSON object: the InferenceService
annotations listed in the logger's metadataAnnotations, name -> value; absent when there are none).
The body is the inference payload as served: V1 `{"instances": [...]}` / `{"predictions": [...]}` or
V2 `{"inputs": [tensor...]}` / `{"outputs": [tensor...]}`.
"""

from __future__ import annotations

import math
import urllib.parse
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cloudevents.exceptions import GenericException
from cloudevents.http import from_http

from kanari.drift.profile import Feature
from kanari.webguard import loads

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
# Forwarded by the logger; it only picks which of the revisions the ModelDeployment declares an event
# belongs to (Serverless canaries share the `default` endpoint). Baselines never come from events.
REVISION_ANNOTATION = "kanari.dev/revision"
MAX_ROWS = 10_000
STRUCTURED = "application/cloudevents"


class MalformedEvent(ValueError):
    """The event or its payload cannot be used; the message says why (it goes back in the 400 body)."""


class RowLimit(MalformedEvent):
    """More rows in one event than the monitor takes (413)."""


@dataclass(frozen=True)
class LoggedEvent:
    id: str
    kind: str  # "request" | "response"
    namespace: str
    model: str
    component: str
    endpoint: str
    annotations: dict[str, str]
    data: dict[str, Any]


def _json_extension(name: str, raw: Any) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    text = str(raw)
    try:
        value = loads(text)
    except ValueError:
        # The HTTP binding lets a sender percent-encode header values; sdk-go releases differ on it.
        try:
            value = loads(urllib.parse.unquote(text))
        except ValueError:
            raise MalformedEvent(f"ce-{name}: not a JSON object") from None
    if not isinstance(value, dict):
        raise MalformedEvent(f"ce-{name}: not a JSON object")
    return value


def parse_event(headers: Mapping[str, str], body: bytes) -> LoggedEvent:
    """One HTTP delivery (binary or structured mode) as a LoggedEvent; MalformedEvent if unusable."""
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    if content_type.lower().startswith(STRUCTURED):
        # The SDK parses a structured body with plain json.loads; vet it first (depth, huge integers).
        try:
            loads(body)
        except ValueError as exc:
            raise MalformedEvent(f"structured CloudEvent: not JSON: {exc}") from None
    try:
        event = from_http(dict(headers), body, data_unmarshaller=_json_body)
    except GenericException as exc:
        raise MalformedEvent(f"not a CloudEvent: {exc}") from None
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        # The SDK lets its own parsing errors out for some inputs (bad JSON in structured mode, a
        # `data` of the wrong type); a delivery it cannot read is malformed, never a server error.
        raise MalformedEvent(f"not a CloudEvent: {type(exc).__name__}") from None
    attrs = event.get_attributes()
    etype = attrs.get("type")
    if etype == REQUEST_TYPE:
        kind = "request"
    elif etype == RESPONSE_TYPE:
        kind = "response"
    else:
        raise MalformedEvent(f"ce-type {etype!r} is neither {REQUEST_TYPE} nor {RESPONSE_TYPE}")
    missing = [a for a in ("id", "inferenceservicename", "namespace") if not attrs.get(a)]
    if missing:
        raise MalformedEvent(f"missing CloudEvent attributes: {', '.join('ce-' + m for m in missing)}")
    data = event.data
    if not isinstance(data, dict):
        raise MalformedEvent("the payload is not a JSON object")
    annotations = {str(k): str(v) for k, v in _json_extension("annotations", attrs.get("annotations")).items()}
    return LoggedEvent(
        id=str(attrs["id"]),
        kind=kind,
        namespace=str(attrs["namespace"]),
        model=str(attrs["inferenceservicename"]),
        component=str(attrs.get("component") or "predictor"),
        endpoint=str(attrs.get("endpoint") or "default"),
        annotations=annotations,
        data=data,
    )


def _json_body(raw: Any) -> Any:
    if raw is None:
        return None
    if isinstance(raw, dict | list):  # structured mode: already parsed (and vetted) JSON
        return raw
    try:
        return loads(raw)
    except (ValueError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------- rows
@dataclass
class Rows:
    """A payload's rows: positional (a 2-D list, columns in training order) or named columns."""

    n: int
    positional: list[Any] | None = None
    named: dict[str, list[Any]] | None = None


def _flatten(data: Any, shape: list[int], where: str) -> list[Any]:
    """The tensor's values, flat, whether the sender nested them or not; without recursion and
    refusing before building anything larger than the shape says."""
    size = math.prod(shape)
    if not isinstance(data, list):
        raise MalformedEvent(f"{where}.data: expected a list")
    if len(data) == size and not any(isinstance(v, list | dict) for v in data):
        return data
    out: list[Any] = []
    stack: list[tuple[list[Any], int]] = [(data, 0)]
    while stack:
        items, i = stack.pop()
        while i < len(items):
            v = items[i]
            i += 1
            if isinstance(v, list):
                if len(stack) >= len(shape):
                    raise MalformedEvent(f"{where}.data: nested deeper than shape {shape}")
                stack.append((items, i))
                items, i = v, 0
                continue
            if isinstance(v, dict):
                raise MalformedEvent(f"{where}.data: values must be scalars")
            out.append(v)
            if len(out) > size:
                raise MalformedEvent(f"{where}: more values than shape {shape} holds")
    return out


def _tensor_rows(tensor: Mapping[str, Any], where: str, max_rows: int) -> tuple[str, list[Any], list[int]]:
    if not isinstance(tensor, Mapping) or "data" not in tensor:
        raise MalformedEvent(f"{where}: a V2 tensor needs name, shape, datatype and data")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list) or not shape or len(shape) > 8
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ):
        raise MalformedEvent(f"{where}.shape: expected a list of at most 8 non-negative integers")
    # The shape is the sender's claim: check it against the data before building anything from it
    # (an 83-byte `shape: [20000000, 0], data: []` must not become twenty million rows).
    if shape[0] > max_rows:
        raise RowLimit(f"{where}: {shape[0]} rows; at most {max_rows} per event")
    width = math.prod(shape[1:])
    if shape[0] and not width:
        raise MalformedEvent(f"{where}.shape: {shape} has rows without values")
    flat = _flatten(tensor["data"], shape, where)
    if len(flat) != shape[0] * width:
        raise MalformedEvent(f"{where}: {len(flat)} values do not fill shape {shape}")
    rows = [flat[i * width : (i + 1) * width] for i in range(shape[0])]
    return str(tensor.get("name", "")), rows, shape


def request_rows(data: Mapping[str, Any], max_rows: int = MAX_ROWS) -> Rows:
    """Feature rows of a V1 (`instances`) or V2 (`inputs`) request."""
    if "instances" in data:
        instances = data["instances"]
        if not isinstance(instances, list):
            raise MalformedEvent("instances: expected a list")
        if len(instances) > max_rows:
            raise RowLimit(f"instances: {len(instances)} rows; at most {max_rows} per event")
        if instances and all(isinstance(r, Mapping) for r in instances):
            names = list(dict.fromkeys(k for r in instances for k in r))
            return Rows(len(instances), named={k: [r.get(k) for r in instances] for k in names})
        rows = [r if isinstance(r, list) else [r] for r in instances]
        return Rows(len(rows), positional=rows)
    if "inputs" in data:
        inputs = data["inputs"]
        if not isinstance(inputs, list) or not inputs:
            raise MalformedEvent("inputs: expected a non-empty list of tensors")
        if len(inputs) > 1024:
            raise MalformedEvent("inputs: more than 1024 tensors")
        tensors = [_tensor_rows(t, f"inputs[{i}]", max_rows) for i, t in enumerate(inputs)]
        if len(tensors) == 1 and len(tensors[0][2]) >= 2 and tensors[0][2][1] != 1:
            _, rows, shape = tensors[0]
            return Rows(shape[0], positional=rows)
        n = tensors[0][2][0]
        named: dict[str, list[Any]] = {}
        for i, (name, rows, shape) in enumerate(tensors):
            if shape[0] != n:
                raise MalformedEvent(f"inputs[{i}]: {shape[0]} rows, inputs[0] has {n}")
            if rows and len(rows[0]) != 1:
                raise MalformedEvent(f"inputs[{i}] ({name}): a named input must hold one value per row")
            named[name] = [r[0] for r in rows]
        return Rows(n, named=named)
    raise MalformedEvent("the request has neither instances (V1) nor inputs (V2)")


def response_values(data: Mapping[str, Any], max_rows: int = MAX_ROWS) -> list[Any]:
    """One prediction per row from a V1 (`predictions`) or V2 (`outputs`) response; a vector per row
    (class probabilities) becomes its arg-max class index."""
    if "predictions" in data:
        preds = data["predictions"]
        if not isinstance(preds, list):
            raise MalformedEvent("predictions: expected a list")
        if len(preds) > max_rows:
            raise RowLimit(f"predictions: {len(preds)} rows; at most {max_rows} per event")
        rows = preds
    elif "outputs" in data:
        outputs = data["outputs"]
        if not isinstance(outputs, list) or not outputs:
            raise MalformedEvent("outputs: expected a non-empty list of tensors")
        _, rows, _ = _tensor_rows(outputs[0], "outputs[0]", max_rows)
    else:
        raise MalformedEvent("the response has neither predictions (V1) nor outputs (V2)")
    out = []
    for r in rows:
        if isinstance(r, list):
            if len(r) == 1:
                out.append(r[0])
            elif r and all(isinstance(v, int | float) and not isinstance(v, bool) for v in r):
                try:
                    out.append(int(np.argmax(np.asarray(r, dtype=np.float64))))
                except OverflowError:
                    raise MalformedEvent("a prediction vector holds a number out of range") from None
            else:
                raise MalformedEvent("a prediction must be a value or a vector of numbers")
        elif isinstance(r, Mapping):
            raise MalformedEvent("a prediction must be a value or a vector of numbers, not an object")
        else:
            out.append(r)
    return out


# --------------------------------------------------------------------------------------- to arrays
@dataclass
class Arrays:
    """Rows in the form a Profile takes, plus the schema violations found on the way."""

    n: int
    numeric: np.ndarray
    categorical: dict[str, np.ndarray]
    violations: Counter[str] = field(default_factory=Counter)


def _as_float(v: Any) -> float | None:
    """The number a value stands for (JSON true/false read as 1/0), None if it is not one or is out of range."""
    if not isinstance(v, int | float):
        return None
    try:
        return float(v)
    except OverflowError:
        return None


def _category(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def to_arrays(
    rows: Rows,
    features: Sequence[Feature],
    domains: Mapping[str, set[str] | None],
    required: Mapping[str, float],
) -> Arrays:
    """Map payload rows onto the baseline's features.

    Violations are counted per value (row x feature): missing_column, extra_column, type_mismatch,
    unseen_category, completeness (a value missing in a feature the baseline always had).
    """
    violations: Counter[str] = Counter()
    columns: dict[str, list[Any]] = {}
    if rows.positional is not None:
        widths = {len(r) for r in rows.positional}
        if len(widths) > 1:
            raise MalformedEvent(f"instances: rows have different lengths {sorted(widths)}")
        width = widths.pop() if widths else len(features)
        if width < len(features):
            violations["missing_column"] += (len(features) - width) * rows.n
        elif width > len(features):
            violations["extra_column"] += (width - len(features)) * rows.n
        for j, f in enumerate(features[:width]):
            columns[f.name] = [r[j] for r in rows.positional]
    else:
        named = rows.named or {}
        known = {f.name for f in features}
        violations["extra_column"] += sum(1 for k in named if k not in known) * rows.n
        violations["missing_column"] += sum(1 for f in features if f.name not in named) * rows.n
        columns = {k: v for k, v in named.items() if k in known}

    numeric_features = [f for f in features if f.numeric]
    numeric = np.full((rows.n, len(numeric_features)), np.nan)
    for j, f in enumerate(numeric_features):
        values = columns.get(f.name)
        if values is None:
            continue
        try:
            numeric[:, j] = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            for i, v in enumerate(values):
                if v is None:
                    continue
                number = _as_float(v)
                if number is not None:
                    numeric[i, j] = number
                else:
                    violations["type_mismatch"] += 1
        nulls = sum(1 for v in values if v is None)
        if nulls and required.get(f.name, 0.0) >= 1.0:
            violations["completeness"] += nulls
    categorical: dict[str, np.ndarray] = {}
    for f in features:
        if f.numeric or f.name not in columns:
            continue
        values = [None if v is None else _category(v) for v in columns[f.name]]
        absent = sum(1 for v in values if v is None)
        if absent and required.get(f.name, 0.0) >= 1.0:
            violations["completeness"] += absent
        domain = domains.get(f.name)
        if domain is not None:
            violations["unseen_category"] += sum(1 for v in values if v is not None and v not in domain)
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        categorical[f.name] = arr
    return Arrays(rows.n, numeric, categorical, violations)
