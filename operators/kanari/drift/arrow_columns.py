"""Arrow columns as numpy arrays without pandas.

pyarrow's own `Array.to_numpy` and any Python-to-Arrow scalar conversion import pandas (~0.4 s of CPU), which
a numeric baseline or comparison otherwise never needs; these read Arrow's buffers directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def is_number_type(arrow_type: Any) -> bool:
    """Integer or floating (bool is neither: it is a String feature, as in pandas' path)."""
    import pyarrow as pa

    return bool(pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type))


def float_values(array: Any) -> np.ndarray:
    """A numeric Arrow Array as float64, nulls as NaN (integers past 2**53 rounded, as pandas does).
    Read-only when no copy was needed."""
    import pyarrow as pa

    if array.type != pa.float64():
        array = array.cast(pa.float64(), safe=False)
    n, offset = len(array), array.offset
    values = np.frombuffer(array.buffers()[1], dtype=np.float64, count=n, offset=offset * 8) if n else np.empty(0)
    if array.null_count:
        bits = np.unpackbits(np.frombuffer(array.buffers()[0], dtype=np.uint8), bitorder="little")
        values = np.where(bits[offset : offset + n].astype(bool), values, np.nan)
    return values


# Columns decoded at a time from one row group. Arrow holds ~2.9 MB per column of a 100k-row row group while it
# reads (raw column chunk, dictionary, decoded values), 290 MB at 100 columns, and a one-shot process pays for
# every fresh page it touches (zeroing them was most of the baseline's system time): in groups, only the decoded
# values stay (0.8 MB a column) and the group's buffers are reused for the next (Arrow's peak 268 -> 93 MB).
COLUMN_GROUP = 16


def parquet_batches(path: Any, columns: Any, batch_rows: int) -> Any:
    """RecordBatches of a Parquet file's `columns`, `batch_rows` rows at most, one row group at a time.

    Pre-buffered: Arrow fetches each column chunk of the row group in one read (without it, batches narrower
    than the row group re-read pages column by column: 9x the CPU on a 100-column file), and what it
    buffered goes with the row group, so memory stays bounded by one row group, not the file. A row group
    wider than COLUMN_GROUP columns is decoded a group of columns at a time and then cut into batches.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = list(columns)
    pf = pq.ParquetFile(path, pre_buffer=True)
    for group in range(pf.num_row_groups):
        if len(columns) <= COLUMN_GROUP:
            yield from pf.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns)
            continue
        arrays = []
        for start in range(0, len(columns), COLUMN_GROUP):
            arrays.extend(pf.read_row_group(group, columns=columns[start : start + COLUMN_GROUP]).columns)
        yield from pa.Table.from_arrays(arrays, names=columns).to_batches(max_chunksize=batch_rows)
