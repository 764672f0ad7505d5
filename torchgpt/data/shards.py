"""Token shard format: header, atomic writer, memory-mapped reader, manifest, fingerprint, verify.

A shard is a 256 x int32 header followed by uint16 tokens, laid out like llm.c's
(dev/data/fineweb.py: magic 20240520, version 1, token count) so llm.c readers accept our files;
the header slots llm.c leaves zero name the tokenizer, its vocabulary and its end-of-text id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_SHARD_TOKENS = 2**31 - 1  # the token count is one int32 header slot
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
_NAME_SLOT, _NAME_BYTES = 8, 32  # tokenizer name: 32 ASCII bytes in header[8:16]
_HASH_CHUNK = 1 << 24


@dataclass(frozen=True)
class ShardHeader:
    """What a shard header says about the tokens that follow it."""

    num_tokens: int
    tokenizer: str
    vocab_size: int
    eot_id: int


def shard_name(split: str, index: int) -> str:
    """File name of shard `index` of `split`, e.g. `train_000003.bin`."""
    return f"{split}_{index:06d}.bin"


def encode_header(header: ShardHeader) -> bytes:
    """Pack `header` into the 1024-byte on-disk form."""
    name = header.tokenizer.encode("ascii")
    if len(name) > _NAME_BYTES:
        raise ValueError(f"tokenizer name {header.tokenizer!r} is longer than {_NAME_BYTES} bytes")
    ints = np.zeros(HEADER_INTS, dtype="<i4")
    ints[:6] = [MAGIC, VERSION, header.num_tokens, header.vocab_size, header.eot_id, 0]
    ints[_NAME_SLOT : _NAME_SLOT + _NAME_BYTES // 4] = np.frombuffer(
        name.ljust(_NAME_BYTES, b"\0"), dtype="<i4"
    )
    return ints.tobytes()


def read_header(path: str | os.PathLike) -> ShardHeader:
    """Read and check the header of shard `path` and that the file holds exactly its tokens.

    Raises:
        ValueError: Naming the file, when the header is short, has the wrong magic or version, or
            the file size disagrees with the token count (a truncated or padded shard).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"shard {path} does not exist; re-run tools/prepare_data.py")
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise ValueError(
            f"shard {path} is truncated: {len(raw)} bytes, shorter than the {HEADER_BYTES}-byte "
            f"header; delete it and re-run tools/prepare_data.py"
        )
    ints = np.frombuffer(raw, dtype="<i4")
    if ints[0] != MAGIC:
        raise ValueError(
            f"shard {path} has magic {int(ints[0])}, expected {MAGIC}: not a token shard or a "
            f"corrupt header; re-create it with tools/prepare_data.py"
        )
    if ints[1] != VERSION:
        raise ValueError(
            f"shard {path} has format version {int(ints[1])}; this torchgpt reads version "
            f"{VERSION} (uint16 tokens); re-create it with this version of tools/prepare_data.py"
        )
    name = ints[_NAME_SLOT : _NAME_SLOT + _NAME_BYTES // 4].tobytes().rstrip(b"\0")
    header = ShardHeader(int(ints[2]), name.decode("ascii", "replace"), int(ints[3]), int(ints[4]))
    expected = HEADER_BYTES + header.num_tokens * TOKEN_DTYPE.itemsize
    size = path.stat().st_size
    if header.num_tokens < 0 or size != expected:
        raise ValueError(
            f"shard {path} is {size} bytes but its header promises {header.num_tokens} tokens "
            f"({expected} bytes): truncated or corrupt; re-run tools/prepare_data.py"
        )
    if not header.tokenizer or header.vocab_size <= 0 or header.vocab_size > 1 << 16:
        raise ValueError(
            f"shard {path} names no usable tokenizer (name {header.tokenizer!r}, vocab "
            f"{header.vocab_size}); it was not written by tools/prepare_data.py"
        )
    return header


def open_tokens(path: str | os.PathLike) -> np.ndarray:
    """Memory-map the tokens of shard `path` (read-only; nothing is read until sliced)."""
    header = read_header(path)
    if header.num_tokens == 0:  # mmap cannot map zero bytes
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(
        path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(header.num_tokens,)
    )


def file_sha256(path: str | os.PathLike, on_chunk: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file, read in chunks; `on_chunk(nbytes)` after each (for progress)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return digest.hexdigest()


class PartialShard:
    """One shard being written under a hidden temporary name, renamed when complete.

    The temporary file holds a placeholder header and the tokens appended so far; `finish`
    writes the real header, fsyncs and renames, so the final name only ever holds a whole shard.
    """

    def __init__(self, path: Path, tokenizer: str, vocab_size: int, eot_id: int):
        self.path = path
        self.tmp_path = path.with_name(f".{path.name}.partial")
        self.header = ShardHeader(0, tokenizer, vocab_size, eot_id)
        self.num_tokens = 0
        self._file: BinaryIO | None = None

    def open(self, resume_tokens: int = 0) -> None:
        """Open the temp file, keeping its first `resume_tokens` tokens (0 starts afresh)."""
        if resume_tokens:
            if not self.tmp_path.exists() and self.path.exists():
                # Killed after the rename but before the checkpoint that records it: reopen it.
                os.replace(self.path, self.tmp_path)
            size = HEADER_BYTES + resume_tokens * TOKEN_DTYPE.itemsize
            if not self.tmp_path.is_file() or self.tmp_path.stat().st_size < size:
                raise ValueError(f"cannot resume: {self.tmp_path} is missing or too short")
            self._file = open(self.tmp_path, "r+b")
            self._file.truncate(size)  # drop tokens written after the last checkpoint
            self._file.seek(size)
        else:
            self._file = open(self.tmp_path, "wb")
            self._file.write(encode_header(self.header))
        self.num_tokens = resume_tokens

    def append(self, tokens: np.ndarray) -> None:
        assert self._file is not None and tokens.dtype == TOKEN_DTYPE
        self._file.write(tokens.tobytes())
        self.num_tokens += len(tokens)

    def sync(self) -> None:
        """Make the tokens appended so far durable (called before a resume checkpoint)."""
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())

    def finish(self) -> dict[str, Any]:
        """Write the header, rename to the final name and return the manifest entry."""
        assert self._file is not None
        header = dataclasses.replace(self.header, num_tokens=self.num_tokens)
        self._file.seek(0)
        self._file.write(encode_header(header))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        documents = 0  # documents starting in this shard = its end-of-text tokens
        if self.num_tokens:
            tokens = np.memmap(self.tmp_path, TOKEN_DTYPE, "r", HEADER_BYTES, (self.num_tokens,))
            documents = int(np.count_nonzero(tokens == header.eot_id))
            del tokens
        sha = file_sha256(self.tmp_path)
        os.replace(self.tmp_path, self.path)
        return {
            "file": self.path.name,
            "split": self.path.name.split("_")[0],
            "tokens": self.num_tokens,
            "documents": documents,
            "sha256": sha,
        }

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ShardWriter:
    """Writes one split as a sequence of shards of `shard_size` tokens (the last may be shorter).

    Args:
        out: Output folder.
        split: "train" or "val" (the file name prefix).
        shard_size: Tokens per shard.
        tokenizer: {"name", "vocab_size", "eot_id"} for the headers.
        state: A previous `state()` to resume from (its partial shard is truncated back to it).
    """

    def __init__(
        self,
        out: Path,
        split: str,
        shard_size: int,
        tokenizer: dict[str, Any],
        state: dict[str, Any] | None = None,
    ):
        self.out, self.split, self.shard_size = out, split, shard_size
        self.tokenizer = (tokenizer["name"], tokenizer["vocab_size"], tokenizer["eot_id"])
        self.shards: list[dict[str, Any]] = []
        self.partial: PartialShard | None = None
        if state:
            self.shards = state["shards"]
            for entry in self.shards:
                read_header(out / entry["file"])  # a listed shard must still be intact
            if state["partial_tokens"]:
                self._new_partial().open(resume_tokens=state["partial_tokens"])

    def _new_partial(self) -> PartialShard:
        path = self.out / shard_name(self.split, len(self.shards))
        self.partial = PartialShard(path, *self.tokenizer)
        return self.partial

    def write(self, tokens: np.ndarray) -> bool:
        """Append tokens, completing shards as they fill; True if any shard completed."""
        completed = False
        while len(tokens):
            if self.partial is None:
                self._new_partial().open()
            room = self.shard_size - self.partial.num_tokens
            self.partial.append(tokens[:room])
            tokens = tokens[room:]
            if self.partial.num_tokens == self.shard_size:
                self.shards.append(self.partial.finish())
                self.partial, completed = None, True
        return completed

    def sync(self) -> None:
        """Make the partial shard durable (before a resume checkpoint)."""
        if self.partial is not None:
            self.partial.sync()

    def finish(self) -> None:
        """Complete the last, partial shard (if it holds tokens)."""
        if self.partial is not None and self.partial.num_tokens:
            self.shards.append(self.partial.finish())
        self.partial = None

    def state(self) -> dict[str, Any]:
        """Completed shard entries and the partial shard's token count (JSON-able)."""
        return {
            "shards": self.shards,
            "partial_tokens": self.partial.num_tokens if self.partial else 0,
        }


def write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    """Write JSON to `path` via a temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Load `data_dir/manifest.json`, written by tools/prepare_data.py when a run completes.

    Raises:
        ValueError: The folder or manifest is missing (the run never finished) or unreadable.
    """
    path = Path(data_dir) / MANIFEST
    if not Path(data_dir).is_dir():
        raise ValueError(
            f"data folder {data_dir} does not exist; create it with "
            f"tools/prepare_data.py --out {data_dir}"
        )
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist: {data_dir} is not a finished tools/prepare_data.py output "
            f"(an interrupted run resumes when re-run with the same arguments)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-run tools/prepare_data.py") from err
    for key in ("tokenizer", "shards"):
        if key not in manifest:
            raise ValueError(f"{path} has no {key!r} key; re-run tools/prepare_data.py")
    return manifest


def split_shards(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """Manifest entries of `split`'s shards in stream order."""
    entries = [s for s in manifest["shards"] if s["split"] == split]
    return sorted(entries, key=lambda s: s["file"])


def data_fingerprint(data_dir: str | os.PathLike) -> str:
    """A short hash that identifies the training token stream of `data_dir`.

    Covers the tokenizer and every train shard's name, token count and sha256 (from the
    manifest, so it costs no data reads); validation shards do not change the training stream.
    """
    manifest = read_manifest(data_dir)
    parts = [json.dumps(manifest["tokenizer"], sort_keys=True)]
    parts += [f"{s['file']}:{s['tokens']}:{s['sha256']}" for s in split_shards(manifest, "train")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def verify_shards(data_dir: str | os.PathLike) -> list[str]:
    """Check every shard of `data_dir` against its header and the manifest.

    Checks header, size, token count, sha256, document count, token range, and that no shard
    file is missing from or unknown to the manifest.

    Returns:
        One message per problem, each naming the bad file; empty when everything is intact.
    """
    data_dir = Path(data_dir)
    try:
        manifest = read_manifest(data_dir)
    except ValueError as err:
        return [str(err)]
    tok = manifest["tokenizer"]
    problems, listed = [], set()
    for entry in manifest["shards"]:
        path = data_dir / entry["file"]
        listed.add(entry["file"])
        try:
            header = read_header(path)
        except ValueError as err:
            problems.append(str(err))
            continue
        if (header.tokenizer, header.vocab_size) != (tok["name"], tok["vocab_size"]):
            problems.append(
                f"{path}: header tokenizer {header.tokenizer}/{header.vocab_size} "
                f"differs from the manifest's {tok['name']}/{tok['vocab_size']}"
            )
        if header.num_tokens != entry["tokens"]:
            problems.append(f"{path}: {header.num_tokens} tokens, manifest says {entry['tokens']}")
        sha = file_sha256(path)
        if sha != entry["sha256"]:
            problems.append(f"{path}: sha256 {sha} differs from the manifest's {entry['sha256']}")
            continue
        tokens = open_tokens(path)
        if len(tokens) and int(tokens.max()) >= header.vocab_size:
            problems.append(
                f"{path}: token id {int(tokens.max())} is out of range for "
                f"{header.tokenizer} (vocab {header.vocab_size})"
            )
        if int(np.count_nonzero(tokens == header.eot_id)) != entry["documents"]:
            problems.append(f"{path}: document count differs from the manifest")
    for path in sorted(data_dir.glob("*.bin")):
        if path.name not in listed:
            problems.append(f"{path}: shard file not listed in {data_dir / MANIFEST}")
    return problems
