"""Document sources: file discovery, parquet / jsonl(.gz) / txt reading, skip, clear errors."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from torchgpt.data import sources


@pytest.fixture
def corpus(tmp_path):
    """A folder with one file of each kind (and one file of no supported kind)."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    pq.write_table(
        pa.table({"text": ["p0", "p1", "p2", "p3", "p4"], "id": list(range(5))}),
        root / "a.parquet",
        row_group_size=2,
    )
    (root / "b.jsonl").write_text('{"text": "j0"}\n\n{"text": "j1", "x": 1}\n')
    with gzip.open(root / "sub" / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "g0"}) + "\n" + json.dumps({"text": "g1"}) + "\n")
    (root / "sub" / "d.txt").write_text("whole file\nis one document\n")
    (root / "notes.csv").write_text("ignored")
    return root


ALL_DOCS = ["p0", "p1", "p2", "p3", "p4", "j0", "j1", "g0", "g1", "whole file\nis one document\n"]


def test_folder_is_searched_recursively_in_sorted_order(corpus):
    files = sources.resolve_local_files([str(corpus)])
    assert [p.name for p in files] == ["a.parquet", "b.jsonl", "c.jsonl.gz", "d.txt"]
    assert all(p.is_absolute() for p in files)
    assert list(sources.iter_local_documents(files)) == ALL_DOCS
    assert sources.count_local_documents(files) is None  # jsonl has no cheap count
    assert sources.count_local_documents(files[:1] + files[3:]) == 6


def test_globs_and_files_keep_the_given_order_without_duplicates(corpus):
    files = sources.resolve_local_files([str(corpus / "b.jsonl"), str(corpus / "**" / "*.*")])
    assert [p.name for p in files] == ["b.jsonl", "a.parquet", "c.jsonl.gz", "d.txt"]


@pytest.mark.parametrize("streamed", [False, True], ids=["parts", "streamed"])
@pytest.mark.parametrize("skip", [0, 1, 2, 3, 5, 6, 9, 10, 12])
def test_skip_equals_dropping_the_first_documents(corpus, monkeypatch, skip, streamed):
    if streamed:  # row groups too big to hand out: the reader streams them in small batches
        monkeypatch.setattr(sources, "PART_MAX_BYTES", 0)
        monkeypatch.setattr(sources, "_PARQUET_BATCH_ROWS", 1)
    files = sources.resolve_local_files([str(corpus)])
    assert list(sources.iter_local_documents(files, skip=skip)) == ALL_DOCS[skip:]
    parts = list(sources.iter_local_parts(files, skip=skip, batch_chars=5))
    flat = [d for p in parts for d in (p.read() if isinstance(p, sources.ParquetPart) else p)]
    assert flat == ALL_DOCS[skip:]


def test_parts_hand_out_row_groups_and_batch_the_rest(corpus):
    files = sources.resolve_local_files([str(corpus)])
    parts = list(sources.iter_local_parts(files, skip=1, batch_chars=5))
    row_groups = [p for p in parts if isinstance(p, sources.ParquetPart)]
    assert [(p.row_group, p.first_row, p.start) for p in row_groups] == [
        (0, 0, 1),
        (1, 2, 0),
        (2, 4, 0),
    ]
    assert [p.read() for p in row_groups] == [["p1"], ["p2", "p3"], ["p4"]]
    assert parts[3:] == [["j0", "j1", "g0"], ["g1", ALL_DOCS[-1]]]  # closed at >= 5 characters


def test_missing_and_empty_inputs_are_named(tmp_path, corpus):
    with pytest.raises(ValueError, match=f"input {tmp_path / 'nope'} does not exist"):
        sources.resolve_local_files([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty matches no"):
        sources.resolve_local_files([str(tmp_path / "empty")])
    with pytest.raises(ValueError, match=r"\*.zip matches no"):
        sources.resolve_local_files([str(corpus / "*.zip")])
    with pytest.raises(ValueError, match="notes.csv is not one of"):
        sources.resolve_local_files([str(corpus / "notes.csv")])


def test_bad_records_are_named_by_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"content": "no text field"}\n')
    with pytest.raises(ValueError, match=f"{bad} line 2 has no field 'text' .has: content."):
        list(sources.iter_local_documents([bad]))
    assert list(sources.iter_local_documents([bad], text_field="content", skip=1)) == [
        "no text field"
    ]
    bad.write_text('{"text": 5}\n')
    with pytest.raises(ValueError, match="line 1: field 'text' is int, not a string"):
        list(sources.iter_local_documents([bad]))
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1 is not valid JSON"):
        list(sources.iter_local_documents([bad]))
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["x"]}), table)
    with pytest.raises(ValueError, match=f"{table} has no column 'text' .columns: body."):
        list(sources.iter_local_documents([table]))
    pq.write_table(pa.table({"text": ["x", None]}), table)
    with pytest.raises(ValueError, match="t.parquet row 1: field 'text' is NoneType"):
        list(sources.iter_local_documents([table]))
