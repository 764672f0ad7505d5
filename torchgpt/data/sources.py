"""Where documents come from: local parquet / jsonl(.gz) / txt files, or a hub dataset streamed.

Every source is an iterator of document strings in a fixed order, with `skip` so an interrupted
prepare run can resume after the documents it has already written.
"""

from __future__ import annotations

import glob
import gzip
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCAL_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".txt")
PART_MAX_BYTES = 64 << 20  # larger row groups (uncompressed text) are streamed, not handed out
_PARQUET_BATCH_ROWS = 1024


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in LOCAL_SUFFIXES if name.endswith(s)), None)


def resolve_local_files(inputs: list[str]) -> list[Path]:
    """Expand files, folders (searched recursively) and globs into a sorted, de-duplicated list.

    Raises:
        ValueError: An input does not exist, has an unsupported type, or matches no file.
    """
    files: list[Path] = []
    for item in inputs:
        if any(c in item for c in "*?["):
            found = [Path(p) for p in sorted(glob.glob(item, recursive=True)) if Path(p).is_file()]
        elif Path(item).is_dir():
            found = sorted(p for p in Path(item).rglob("*") if p.is_file())
        elif Path(item).is_file():
            if _suffix(Path(item)) is None:
                raise ValueError(f"input {item} is not one of {', '.join(LOCAL_SUFFIXES)}")
            found = [Path(item)]
        else:
            raise ValueError(f"input {item} does not exist (expected a file, folder or glob)")
        found = [p for p in found if _suffix(p) is not None]
        if not found:
            raise ValueError(f"input {item} matches no {'/'.join(LOCAL_SUFFIXES)} file")
        files += found
    unique = dict.fromkeys(Path(os.path.abspath(p)) for p in files)
    return list(unique)


def count_local_documents(files: list[Path]) -> int | None:
    """Document count when it is cheap to know (parquet metadata, one per .txt), else None."""
    total = 0
    for path in files:
        if _suffix(path) == ".parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(path).metadata.num_rows
        elif _suffix(path) == ".txt":
            total += 1
        else:
            return None
    return total


def _as_text(value: Any, text_field: str, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f"{where}: field {text_field!r} is {type(value).__name__}, not a string; "
            f"pick the text field with --text-field"
        )
    return value


def _open_parquet(path: Path, text_field: str) -> Any:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise ValueError(
            f"{path} has no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)}); "
            f"pass the text column with --text-field"
        )
    return pf


@dataclass(frozen=True)
class ParquetPart:
    """Rows `start`.. of one parquet row group, read by the process that tokenizes them.

    Handing tokenizer workers row groups rather than text keeps parquet decoding and the text
    transfer off the main process, which would otherwise cap throughput at a few workers.
    """

    path: Path
    row_group: int
    first_row: int  # index of the row group's first row in the file (for error messages)
    start: int
    text_field: str

    def read(self) -> list[str]:
        table = _open_parquet(self.path, self.text_field).read_row_group(
            self.row_group, columns=[self.text_field], use_threads=False
        )
        values = table.column(0).slice(self.start).to_pylist()
        row = self.first_row + self.start
        return [
            _as_text(v, self.text_field, f"{self.path} row {row + i}") for i, v in enumerate(values)
        ]


def _column_bytes(group: Any, name: str) -> int:
    """Uncompressed size of column `name` in a row group's metadata."""
    columns = (group.column(j) for j in range(group.num_columns))
    return sum(c.total_uncompressed_size for c in columns if c.path_in_schema == name)


def _parquet_items(path: Path, text_field: str, skip: int) -> Iterator[str | ParquetPart]:
    pf = _open_parquet(path, text_field)
    meta, first = pf.metadata, 0
    for rg in range(meta.num_row_groups):
        group = meta.row_group(rg)
        if skip >= group.num_rows:
            skip -= group.num_rows
        elif _column_bytes(group, text_field) <= PART_MAX_BYTES:
            yield ParquetPart(path, rg, first, skip, text_field)
            skip = 0
        else:  # too big to hand to a worker whole: stream it from here
            row = first
            for batch in pf.iter_batches(
                _PARQUET_BATCH_ROWS, row_groups=[rg], columns=[text_field], use_threads=False
            ):
                for value in batch.column(0).to_pylist():
                    if skip:
                        skip -= 1
                    else:
                        yield _as_text(value, text_field, f"{path} row {row}")
                    row += 1
        first += group.num_rows


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                yield line_no, line


def _parse_jsonl(line: str, text_field: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON: {err}") from err
    if not isinstance(record, dict) or text_field not in record:
        keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(
            f"{where} has no field {text_field!r} (has: {keys}); pick the text field "
            f"with --text-field"
        )
    return _as_text(record[text_field], text_field, where)


def _read_txt(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err})") from err


def _local_items(files: list[Path], text_field: str, skip: int) -> Iterator[str | ParquetPart]:
    for path in files:
        kind = _suffix(path)
        if kind == ".parquet":
            rows = _open_parquet(path, text_field).metadata.num_rows
            if skip < rows:  # resume: whole files are skipped from their metadata
                yield from _parquet_items(path, text_field, skip)
            skip = max(skip - rows, 0)
        elif kind == ".txt":
            if not skip:
                yield _read_txt(path)
            skip = max(skip - 1, 0)
        else:
            for line_no, line in _jsonl_lines(path):
                if skip:  # resume: pass over records without parsing them
                    skip -= 1
                else:
                    yield _parse_jsonl(line, text_field, f"{path} line {line_no}")


def iter_local_parts(
    files: list[Path], text_field: str = "text", skip: int = 0, batch_chars: int = 1 << 20
) -> Iterator[list[str] | ParquetPart]:
    """The documents of `files` in order, as work for tokenizer processes.

    Args:
        files: Output of `resolve_local_files`.
        text_field: Parquet column / jsonl field holding the text.
        skip: Number of leading documents to pass over (resume).
        batch_chars: jsonl / txt documents are grouped into lists of about this many characters;
            parquet row groups come as `ParquetPart`s that the worker reads itself.
    """
    return batch_documents(_local_items(files, text_field, skip), batch_chars)


def iter_local_documents(
    files: list[Path], text_field: str = "text", skip: int = 0
) -> Iterator[str]:
    """Yield the documents of `files` in order: parquet rows, jsonl records, one per .txt file.

    Args:
        files: Output of `resolve_local_files`.
        text_field: Parquet column / jsonl field holding the text.
        skip: Number of leading documents to pass over (resume).
    """
    for item in _local_items(files, text_field, skip):
        if isinstance(item, ParquetPart):
            yield from item.read()
        else:
            yield item


def batch_documents(
    items: Iterable[str | ParquetPart], batch_chars: int
) -> Iterator[list[str] | ParquetPart]:
    """Group documents into lists of about `batch_chars` characters; parts pass through whole."""
    batch, size = [], 0
    for item in items:
        if isinstance(item, ParquetPart):
            if batch:
                yield batch
                batch, size = [], 0
            yield item
            continue
        batch.append(item)
        size += len(item)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def open_hub_documents(
    dataset: str,
    *,
    config: str | None = None,
    split: str = "train",
    text_field: str = "text",
    data_files: list[str] | None = None,
    skip: int = 0,
) -> tuple[Iterator[str], int | None]:
    """Stream the documents of a `datasets` dataset (e.g. HuggingFaceFW/fineweb-edu) in order.

    Args:
        dataset: Hub id, or a builder name such as "parquet" together with `data_files`.
        config: Dataset configuration (e.g. "sample-10BT").
        split: Split to stream.
        text_field: Record field holding the text.
        data_files: Files for a builder name (used to run this path offline).
        skip: Number of leading records to pass over (resume).

    Returns:
        The documents, and the split's record count when the dataset's metadata states it.

    Raises:
        RuntimeError: The dataset cannot be opened (e.g. no network).
    """
    import datasets

    try:
        ds = datasets.load_dataset(
            dataset, name=config, split=split, streaming=True, data_files=data_files
        )
    except Exception as err:  # datasets raises many types (network, not found, bad config)
        raise RuntimeError(
            f"cannot stream dataset {dataset!r} (config {config!r}, split {split!r}): {err}. "
            f"Without network access, prepare local files with --input instead"
        ) from err
    info = (ds.info.splits or {}).get(split) if ds.info else None
    return _hub_records(ds.skip(skip) if skip else ds, dataset, text_field, skip), (
        info.num_examples if info and info.num_examples else None
    )


def _hub_records(
    records: Iterable[dict], dataset: str, text_field: str, skip: int
) -> Iterator[str]:
    for index, record in zip(itertools.count(skip), records):
        if text_field not in record:
            raise ValueError(
                f"dataset {dataset} record {index} has no field {text_field!r} (has: "
                f"{', '.join(record)}); pick the text field with --text-field"
            )
        yield _as_text(record[text_field], text_field, f"dataset {dataset} record {index}")
