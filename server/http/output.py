"""One noisy `DPResult`, three wire formats: JSON, CSV and Arrow IPC stream.

All three are rendered from the same object (the one noisy answer); CSV and Arrow carry the
cost and per-column 95% CI in response headers (Arrow also in its schema metadata).
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any

import pyarrow as pa
from starlette.requests import Request
from starlette.responses import Response

from server.http.errors import json_response
from sqlgate.errors import InvalidParameter
from sqlgate.results import DPResult, _jsonable

FORMATS = ("json", "csv", "arrow")
ARROW_STREAM = "application/vnd.apache.arrow.stream"
_ACCEPT = {"text/csv": "csv", ARROW_STREAM: "arrow", "application/json": "json"}
_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string(),
                "bool": pa.bool_(), "date": pa.date32()}


def choose_format(request: Request, requested: Any) -> str:
    """`format` in the body/query wins; else the Accept header; else JSON."""
    if requested is not None:
        if requested not in FORMATS:
            raise InvalidParameter(f"format must be one of {', '.join(FORMATS)}")
        return requested
    accept = request.headers.get("accept", "")
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in _ACCEPT:
            return _ACCEPT[media]
    return "json"


def result_headers(result: DPResult) -> dict[str, str]:
    ci = {c.name: c.ci95 for c in result.columns if c.noisy}
    return {
        "X-Sqlgate-Query-Id": result.query_id,
        "X-Sqlgate-Dataset": result.dataset,
        "X-Sqlgate-Cost": json.dumps(result.cost.to_dict(), separators=(",", ":")),
        "X-Sqlgate-Cost-Epsilon": repr(float(result.cost.epsilon)),
        "X-Sqlgate-Cost-Delta": repr(float(result.cost.delta)),
        "X-Sqlgate-CI95": json.dumps(ci, separators=(",", ":")),
        "X-Sqlgate-Cached": "true" if result.cached else "false",
    }


def render(result: DPResult, fmt: str) -> Response:
    if fmt == "csv":
        return Response(to_csv(result), media_type="text/csv; charset=utf-8",
                        headers=result_headers(result))
    if fmt == "arrow":
        return Response(to_arrow(result), media_type=ARROW_STREAM, headers=result_headers(result))
    return json_response(result.to_dict(), headers={"X-Sqlgate-Query-Id": result.query_id})


def to_csv(result: DPResult) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result.column_names)
    for row in result.rows:
        writer.writerow(["" if v is None else _jsonable(v) for v in row])
    return out.getvalue().encode("utf-8")


def to_arrow(result: DPResult) -> bytes:
    fields, arrays = [], []
    for index, column in enumerate(result.columns):
        values = [row[index] for row in result.rows]
        arrow_type = _ARROW_TYPES.get(column.type, pa.string())
        try:
            array = pa.array(values, type=arrow_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            # Post-processing can widen a declared int (e.g. ROUND) to float: keep the value.
            array = pa.array([_jsonable(v) for v in values])
        meta = {"noisy": "true" if column.noisy else "false",
                "ci95": "" if column.ci95 is None else repr(float(column.ci95))}
        fields.append(pa.field(column.name, array.type, metadata=meta))
        arrays.append(array)
    schema = pa.schema(fields, metadata={"sqlgate": json.dumps({
        "query_id": result.query_id, "dataset": result.dataset, "cost": result.cost.to_dict(),
        "cached": result.cached}, separators=(",", ":"))})
    table = pa.Table.from_arrays(arrays, schema=schema)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()
