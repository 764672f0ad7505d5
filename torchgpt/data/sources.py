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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCAL_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".txt")
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


def _iter_parquet(path: Path, text_field: str, skip: int) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise ValueError(
            f"{path} has no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)}); "
            f"pass the text column with --text-field"
        )
    row = 0
    # Single-threaded decoding: the cores belong to the tokenizer workers.
    for batch in pf.iter_batches(_PARQUET_BATCH_ROWS, columns=[text_field], use_threads=False):
        if row + batch.num_rows > skip:
            start = max(skip - row, 0)
            for offset, value in enumerate(batch.column(0).to_pylist()[start:], start):
                yield _as_text(value, text_field, f"{path} row {row + offset}")
        row += batch.num_rows


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


def iter_local_documents(
    files: list[Path], text_field: str = "text", skip: int = 0
) -> Iterator[str]:
    """Yield the documents of `files` in order: parquet rows, jsonl records, one per .txt file.

    Args:
        files: Output of `resolve_local_files`.
        text_field: Parquet column / jsonl field holding the text.
        skip: Number of leading documents to pass over (resume); whole parquet files are
            skipped from their metadata without reading them.
    """
    for path in files:
        kind = _suffix(path)
        if kind == ".parquet":
            if skip:
                import pyarrow.parquet as pq

                rows = pq.ParquetFile(path).metadata.num_rows
                if rows <= skip:
                    skip -= rows
                    continue
            yield from _iter_parquet(path, text_field, skip)
            skip = 0
            continue
        if kind == ".txt":
            if skip:
                skip -= 1
                continue
            yield _read_txt(path)
            continue
        for line_no, line in _jsonl_lines(path):
            if skip:  # resume: pass over records without parsing them
                skip -= 1
                continue
            yield _parse_jsonl(line, text_field, f"{path} line {line_no}")


def iter_hub_documents(
    dataset: str,
    *,
    config: str | None = None,
    split: str = "train",
    text_field: str = "text",
    data_files: list[str] | None = None,
    skip: int = 0,
) -> Iterator[str]:
    """Stream the documents of a `datasets` dataset (e.g. HuggingFaceFW/fineweb-edu) in order.

    Args:
        dataset: Hub id, or a builder name such as "parquet" together with `data_files`.
        config: Dataset configuration (e.g. "sample-10BT").
        split: Split to stream.
        text_field: Record field holding the text.
        data_files: Files for a builder name (used to run this path offline).
        skip: Number of leading records to pass over (resume).
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
    records = ds.skip(skip) if skip else ds
    for index, record in zip(itertools.count(skip), records):
        if text_field not in record:
            raise ValueError(
                f"dataset {dataset} record {index} has no field {text_field!r} (has: "
                f"{', '.join(record)}); pick the text field with --text-field"
            )
        yield _as_text(record[text_field], text_field, f"dataset {dataset} record {index}")
