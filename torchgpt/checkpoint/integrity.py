"""Checkpoints that prove themselves: a checksum of every file, written at save, checked at load.

`write_checksums(folder)` records each file's size and CRC-32 in `checksums.json` before the
COMPLETE marker; `verify(folder)` re-reads every file and names the first one that differs.
A checkpoint that fails is moved aside by `quarantine` (`step-N` -> `step-N.corrupt`, with the
reason inside): it no longer counts as a checkpoint, so resume falls back to an older one,
retention never keeps it, and the re-run step can be saved again.

CRC-32 (zlib) because the threat is storage and transfer faults, not an adversary: it catches
every burst error up to 32 bits and any other change with probability 1 - 2^-32, and it runs
at several GB/s here (about 3x SHA-256; bench/checkpoint.py prints the cost next to save/load),
so verifying costs a fraction of reading the checkpoint back for the load itself.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

from torchgpt.checkpoint.layout import MARKER_NAME, fsync_dir, read_json, write_json_atomic

logger = logging.getLogger(__name__)

CHECKSUMS_NAME = "checksums.json"
CORRUPT_SUFFIX = ".corrupt"
REASON_NAME = "QUARANTINE.txt"
_CHUNK = 1 << 24
# Written after the checksums (the marker) or by quarantine: never part of the checked set.
_UNCHECKED = {CHECKSUMS_NAME, MARKER_NAME, REASON_NAME}


def file_crc32(path: Path) -> str:
    """CRC-32 of a file as 8 hex digits, read in 16 MiB chunks."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in _UNCHECKED)


def write_checksums(folder: Path) -> int:
    """Record size and CRC-32 of every file in `folder` (atomically); returns the bytes read."""
    files = {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "crc32": file_crc32(p)}
        for p in _files(folder)
    }
    write_json_atomic(folder / CHECKSUMS_NAME, {"algorithm": "crc32", "files": files})
    return sum(f["bytes"] for f in files.values())


def has_checksums(folder: Path) -> bool:
    return (folder / CHECKSUMS_NAME).is_file()


def verify(folder: Path) -> str | None:
    """None when every recorded file is present with its size and CRC-32, else what is wrong.

    A checkpoint written before checksums existed (no checksums.json) passes with a warning.
    Never raises for a bad checkpoint: a read error is the answer (callers broadcast it).
    """
    try:
        return _verify(folder)
    except OSError as e:
        return f"{folder} could not be read: {type(e).__name__}: {e}"


def _verify(folder: Path) -> str | None:
    record = read_json(folder / CHECKSUMS_NAME)
    if record is None:
        if has_checksums(folder):
            return f"{folder / CHECKSUMS_NAME} is unreadable"
        logger.warning(
            "%s has no %s (an older torchgpt wrote it): not verified", folder, CHECKSUMS_NAME
        )
        return None
    for name, expected in sorted(record.get("files", {}).items()):
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{path} is {size} bytes, {expected['bytes']} when saved (truncated?)"
        crc = file_crc32(path)
        if crc != expected["crc32"]:
            return f"{path} has CRC-32 {crc}, {expected['crc32']} when saved (corrupt bytes)"
    unknown = sorted(set(str(p.relative_to(folder)) for p in _files(folder)) - set(record["files"]))
    if unknown:
        return f"{folder} holds files written after the save: {unknown}"
    return None


def quarantine(folder: Path, reason: str) -> Path:
    """Rename `folder` to `<name>.corrupt` (or `.corrupt.N`), note the reason inside; returns it.

    The folder stops matching `step-N`, so it is no longer a checkpoint to resume or retain; it
    stays on disk for inspection.
    """
    target = folder.with_name(folder.name + CORRUPT_SUFFIX)
    n = 1
    while target.exists():
        target = folder.with_name(f"{folder.name}{CORRUPT_SUFFIX}.{n}")
        n += 1
    folder.rename(target)
    fsync_dir(folder.parent)
    try:
        (target / REASON_NAME).write_text(reason + "\n", encoding="utf-8")
    except OSError:
        pass
    return target
