"""Reading tabular data files (CSV or Parquet) for baselines and comparisons."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")


def _arrow_error() -> type[Exception]:
    try:
        import pyarrow
    except ImportError:
        return DataError  # nothing else to catch without pyarrow
    return pyarrow.ArrowException


class DataError(ValueError):
    """The input file cannot be read as a table; the message names the file and why."""


def table_columns(path: str | os.PathLike[str]) -> list[str]:
    """The column names of a CSV/TSV/Parquet file, read from its header or schema only."""
    import csv
    import gzip

    p = Path(path)
    name = p.name.lower()
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    try:
        if name.endswith(PARQUET_SUFFIXES):
            import pyarrow.parquet as pq

            return [str(c) for c in pq.read_schema(p).names]
        if name.endswith(CSV_SUFFIXES):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(p, "rt", newline="") as fh:  # type: ignore[operator]
                header = next(csv.reader(fh, delimiter="\t" if name.endswith(".tsv") else ","), None)
            if not header:
                raise DataError(f"{p}: no header row")
            return header
    except DataError:
        raise
    except (OSError, ValueError, csv.Error, _arrow_error()) as exc:
        raise DataError(f"{p}: cannot read: {exc}") from None
    raise DataError(f"{p}: unknown format; use .csv, .tsv or .parquet")


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    import pandas as pd

    p = Path(path)
    name = p.name.lower()
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    try:
        if name.endswith(PARQUET_SUFFIXES):
            try:
                import pyarrow  # noqa: F401  (pandas' Parquet engine; an extra, not in the operator image)
            except ImportError:
                raise DataError(f"{p}: reading Parquet needs pyarrow: pip install 'kanari[cli]'") from None
            df = pd.read_parquet(p)
        elif name.endswith(CSV_SUFFIXES):
            df = pd.read_csv(p, sep="\t" if name.endswith(".tsv") else ",")
        else:
            raise DataError(f"{p}: unknown format; use .csv, .tsv or .parquet")
    except DataError:
        raise
    except (OSError, ValueError, pd.errors.ParserError, _arrow_error()) as exc:
        raise DataError(f"{p}: cannot read: {exc}") from None
    if df.empty:
        raise DataError(f"{p}: no rows")
    return df
