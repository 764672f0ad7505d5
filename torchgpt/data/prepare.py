"""Text -> token shards: the pipeline behind tools/prepare_data.py.

Documents are tokenized in a process pool (GPT-2 BPE, end-of-text before every document as
GPT-2 and llm.c do), routed to a train or val split by document, and written as resumable
shards; a run killed at any point resumes after its last complete shard with identical output.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tiktoken

import torchgpt
from torchgpt.data import sources
from torchgpt.data.progress import Progress
from torchgpt.data.shards import (
    HEADER_BYTES,
    MAGIC,
    MANIFEST,
    MAX_SHARD_TOKENS,
    SPLITS,
    TOKEN_DTYPE,
    VERSION,
    ShardWriter,
    write_json_atomic,
)
from torchgpt.data.tokenizer import EOT_ID, TOKENIZER_NAME, VOCAB_SIZE, get_tokenizer

logger = logging.getLogger(__name__)

STATE_FILE = ".prepare_state.json"
DEFAULT_VAL_FRACTION = 0.01
TOKENIZER_INFO = {"name": TOKENIZER_NAME, "vocab_size": VOCAB_SIZE, "eot_id": EOT_ID}
Batch = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # tokens, per-doc lengths, val flags


@dataclass
class PrepareConfig:
    """Everything one prepare run needs; the fields that shape the output form its settings.

    Set `inputs` for local files, otherwise the hub dataset `hf_dataset` is streamed. The val
    split takes `val_tokens` (the first documents, up to that many tokens) or, by default,
    `val_fraction` (each document by a hash of its text, so exact duplicates share a split).
    """

    out_dir: str
    inputs: list[str] = field(default_factory=list)
    hf_dataset: str = "HuggingFaceFW/fineweb-edu"
    hf_config: str | None = "sample-10BT"
    hf_split: str = "train"
    hf_data_files: list[str] | None = None
    text_field: str = "text"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    shard_size: int = 100_000_000
    max_tokens: int | None = None
    val_fraction: float | None = None
    val_tokens: int | None = None
    tokenizer_dir: str | None = None
    batch_chars: int = 1 << 20
    progress: bool = True
    command: str | None = None

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        if not 0 < self.shard_size <= MAX_SHARD_TOKENS:
            raise ValueError(f"shard_size={self.shard_size} must be in [1, {MAX_SHARD_TOKENS}]")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ValueError(f"max_tokens={self.max_tokens} must be positive (or unset)")
        if self.val_fraction is not None and self.val_tokens is not None:
            raise ValueError("set val_fraction or val_tokens, not both")
        if self.val_fraction is not None and not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction} must be in [0, 1)")
        if self.val_tokens is not None and self.val_tokens < 0:
            raise ValueError(f"val_tokens={self.val_tokens} must be >= 0")
        if self.workers < 0:
            raise ValueError(f"workers={self.workers} must be >= 0 (0 tokenizes in-process)")


# ---- tokenizer workers -------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _die_with_parent(parent_pid: int) -> None:
    # A SIGKILLed parent cannot stop its pool; without this, forked workers (which hold the
    # task pipe open themselves) would wait on it forever. Linux only: prctl(PR_SET_PDEATHSIG).
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (AttributeError, OSError, TypeError):  # not Linux
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _init_worker(bpe_dir: str | None, val_fraction: float, parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    _WORKER["enc"] = get_tokenizer(bpe_dir)
    _WORKER["val_fraction"] = val_fraction


def in_val_by_hash(text: str, fraction: float) -> bool:
    """Whether a document belongs to the val split under `val_fraction` (a hash of its text)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2.0**64


def _encode(enc: tiktoken.Encoding, text: str) -> np.ndarray:
    # encode_to_numpy with no special tokens allowed is encode_ordinary without building a
    # Python list (about 1.4x faster); text that spells "<|endoftext|>" stays ordinary text.
    if not hasattr(enc, "encode_to_numpy"):  # tiktoken < 0.8
        return np.asarray(enc.encode_ordinary(text), dtype=np.uint32)
    try:
        return enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
    except UnicodeEncodeError:
        # Lone surrogates (legal in JSON strings): replace them as encode_ordinary does.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())


def tokenize_documents(texts: list[str]) -> Batch:
    """Tokenize documents as one stream: each is its end-of-text token followed by its tokens."""
    enc, fraction = _WORKER["enc"], _WORKER["val_fraction"]
    eot = np.array([EOT_ID], dtype=np.uint32)
    pieces, lengths = [], np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        ids = _encode(enc, text)
        pieces += (eot, ids)
        lengths[i] = len(ids) + 1
    tokens = np.concatenate(pieces).astype(TOKEN_DTYPE) if texts else np.zeros(0, TOKEN_DTYPE)
    flags = np.array([in_val_by_hash(t, fraction) for t in texts], bool) if fraction else None
    return tokens, lengths, flags


def tokenize_part(part: list[str] | sources.ParquetPart) -> Batch:
    """Worker task: read the part if it is a parquet row group, then tokenize its documents."""
    return tokenize_documents(part.read() if isinstance(part, sources.ParquetPart) else part)


def tokenize_ordered(
    parts: Iterable[list[str] | sources.ParquetPart],
    workers: int,
    bpe_dir: str | None,
    val_fraction: float,
) -> Iterator[Batch]:
    """Map `tokenize_part` over parts in a process pool, keeping input order.

    At most 4 x workers parts are in flight, so memory stays bounded on an endless stream while
    workers always have queued work when the main process is briefly descheduled.
    """
    if workers == 0:
        _init_worker(bpe_dir, val_fraction)
        yield from map(tokenize_part, parts)
        return
    # fork: workers inherit the tokenizer the parent has loaded, so they start at once.
    ctx = multiprocessing.get_context("fork") if os.name == "posix" else None
    init = (bpe_dir, val_fraction, os.getpid())
    with ProcessPoolExecutor(workers, ctx, initializer=_init_worker, initargs=init) as pool:
        pool.submit(os.getpid).result()  # fork every worker now, before a source starts threads
        pending: deque = deque()
        try:
            for part in parts:
                pending.append(pool.submit(tokenize_part, part))
                if len(pending) >= 4 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


# ---- writing -----------------------------------------------------------------------------


class _Run:
    """Routes tokenized batches to the splits, applies the token cap and checkpoints progress."""

    def __init__(self, out: Path, cfg: PrepareConfig, settings: dict, state: dict | None):
        self.out, self.cfg, self.settings = out, cfg, settings
        self.val_tokens = settings["val_tokens"]
        state = state or {}
        self.next_doc = state.get("next_doc", 0)
        self.documents = state.get("documents", dict.fromkeys(SPLITS, 0))
        self.tokens = state.get("tokens", dict.fromkeys(SPLITS, 0))
        self.truncated = state.get("truncated_last_document", False)
        self.writers = {
            s: ShardWriter(out, s, cfg.shard_size, TOKENIZER_INFO, state.get("splits", {}).get(s))
            for s in SPLITS
        }

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())

    def add(self, tokens: np.ndarray, lengths: np.ndarray, flags: np.ndarray | None) -> bool:
        """Write one tokenized batch; True once the token cap is reached."""
        capped = self.cfg.max_tokens is not None and (
            self.total_tokens + len(tokens) >= self.cfg.max_tokens
        )
        if capped:  # keep whole documents up to the cap, then the head of the one crossing it
            remaining = self.cfg.max_tokens - self.total_tokens
            cum = np.cumsum(lengths)
            last = int(np.searchsorted(cum, remaining, side="left"))
            lengths = lengths[: last + 1].copy()
            self.truncated = bool(cum[last] > remaining)
            lengths[last] -= cum[last] - remaining
            tokens = tokens[:remaining]
            flags = None if flags is None else flags[: last + 1]
        self.next_doc += len(lengths)
        if self.val_tokens is not None:  # the first documents, until val holds val_tokens
            starts = self.tokens["val"] + np.cumsum(lengths) - lengths
            flags = starts < self.val_tokens
        if flags is None or not flags.any():
            parts = {"train": (tokens, len(lengths))}
        elif flags.all():
            parts = {"val": (tokens, len(lengths))}
        else:
            mask = np.repeat(flags, lengths)
            n_val = int(flags.sum())
            parts = {"val": (tokens[mask], n_val), "train": (tokens[~mask], len(flags) - n_val)}
        completed = False
        for split, (split_tokens, n_docs) in parts.items():
            completed |= self.writers[split].write(split_tokens)
            self.documents[split] += n_docs
            self.tokens[split] += len(split_tokens)
        if completed:
            self.checkpoint()
        return capped

    def checkpoint(self) -> None:
        """Record progress so a killed run resumes here (partial shards made durable first)."""
        for writer in self.writers.values():
            writer.sync()
        state = {"settings": self.settings, "next_doc": self.next_doc}
        state |= {"documents": self.documents, "tokens": self.tokens}
        state["truncated_last_document"] = self.truncated
        state["splits"] = {s: w.state() for s, w in self.writers.items()}
        write_json_atomic(self.out / STATE_FILE, state)

    def finish(self) -> dict[str, Any]:
        """Complete the last shards, write manifest.json and drop the resume state."""
        for writer in self.writers.values():
            writer.finish()
        manifest = {
            "format": {
                "magic": MAGIC,
                "version": VERSION,
                "header_bytes": HEADER_BYTES,
                "dtype": "uint16",
            },
            **self.settings,
            "documents": self.documents,
            "tokens": self.tokens,
            "truncated_last_document": self.truncated,
            "shards": [e for s in SPLITS for e in self.writers[s].shards],
            "command": self.cfg.command,
            "versions": {"torchgpt": torchgpt.__version__, "tiktoken": tiktoken.__version__},
        }
        write_json_atomic(self.out / MANIFEST, manifest)
        (self.out / STATE_FILE).unlink(missing_ok=True)
        for stale in self.out.glob(".*.partial"):  # partial shards of a killed run, never resumed
            stale.unlink()
        return manifest


# ---- driver ------------------------------------------------------------------------------


def _settings(cfg: PrepareConfig, files: list[Path] | None) -> dict[str, Any]:
    if files is not None:
        source = {
            "kind": "local",
            "text_field": cfg.text_field,
            "files": [{"path": str(p), "bytes": p.stat().st_size} for p in files],
        }
    else:
        source = {
            "kind": "hub",
            "dataset": cfg.hf_dataset,
            "config": cfg.hf_config,
            "split": cfg.hf_split,
            "data_files": cfg.hf_data_files,
            "text_field": cfg.text_field,
        }
    val_fraction = cfg.val_fraction
    if val_fraction is None and cfg.val_tokens is None:
        val_fraction = DEFAULT_VAL_FRACTION
    return {
        "source": source,
        "tokenizer": TOKENIZER_INFO,
        "shard_size": cfg.shard_size,
        "max_tokens": cfg.max_tokens,
        "val_fraction": val_fraction,
        "val_tokens": cfg.val_tokens,
    }


def _previous_run(out: Path, settings: dict) -> tuple[dict | None, dict | None]:
    """(finished manifest, resume state) found in `out`; refuses one made with other settings."""

    for name in (MANIFEST, STATE_FILE):
        path = out / name
        if not path.is_file():
            continue
        previous = json.loads(path.read_text())
        theirs = previous.get("settings", previous) if name == STATE_FILE else previous
        diff = [k for k in settings if theirs.get(k) != settings[k]]
        if diff:
            raise ValueError(
                f"{path} comes from a run with different {', '.join(diff)}; use another --out "
                f"folder or delete {out} to start over"
            )
        return (previous, None) if name == MANIFEST else (None, previous)
    return None, None


def _source_parts(
    cfg: PrepareConfig, files: list[Path] | None, skip: int
) -> tuple[Iterator[list[str] | sources.ParquetPart], int | None]:
    """(work for the tokenizer pool, documents expected if known) from document `skip` on."""
    if files is not None:
        parts = sources.iter_local_parts(files, cfg.text_field, skip, cfg.batch_chars)
        return parts, sources.count_local_documents(files)
    docs, total = sources.open_hub_documents(
        cfg.hf_dataset,
        config=cfg.hf_config,
        split=cfg.hf_split,
        text_field=cfg.text_field,
        data_files=cfg.hf_data_files,
        skip=skip,
    )
    return sources.batch_documents(docs, cfg.batch_chars), total


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Tokenize a corpus into `cfg.out_dir` and return its manifest (resuming if interrupted).

    Raises:
        ValueError: Bad options, missing or empty inputs, or an output folder holding a run with
            different settings.
    """
    cfg.validate()
    out = Path(cfg.out_dir)
    get_tokenizer(cfg.tokenizer_dir)  # fail early (and load it once before forking workers)
    files = sources.resolve_local_files(cfg.inputs) if cfg.inputs else None
    settings = _settings(cfg, files)
    out.mkdir(parents=True, exist_ok=True)
    manifest, state = _previous_run(out, settings)
    if manifest is not None:
        logger.info("%s is already complete (%s); nothing to do", out, MANIFEST)
        return manifest
    run = _Run(out, cfg, settings, state)
    if state:
        logger.info("resuming %s after document %d (%s)", out, run.next_doc, run.tokens)
    parts, total_docs = _source_parts(cfg, files, skip=run.next_doc)
    progress = Progress(total_docs, cfg.max_tokens, enabled=cfg.progress)
    progress.start(run.next_doc, run.total_tokens)
    val_fraction = settings["val_fraction"] or 0.0
    for tokens, lengths, flags in tokenize_ordered(
        parts, cfg.workers, cfg.tokenizer_dir, val_fraction
    ):
        capped = run.add(tokens, lengths, flags)
        progress.update(run.next_doc, run.total_tokens)
        if capped:
            break
    progress.close()
    if run.next_doc == 0:
        where = ", ".join(cfg.inputs) if cfg.inputs else cfg.hf_dataset
        raise ValueError(f"source {where} holds no documents")
    manifest = run.finish()
    if not manifest["tokens"]["train"]:
        logger.warning(
            "every document of %s went to the val split, but training needs train shards; "
            "lower --val-tokens / --val-fraction (val holds out whole documents)",
            out,
        )
    logger.info(
        "wrote %d shards to %s: %s tokens, %s documents",
        len(manifest["shards"]),
        out,
        manifest["tokens"],
        manifest["documents"],
    )
    return manifest
