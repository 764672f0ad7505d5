"""GPT-2 BPE through tiktoken, usable offline.

Owns the one place torchgpt finds its tokenizer files (`resolve_bpe_dir`: a flag or config key,
else $TORCHGPT_GPT2_BPE_DIR, else $TORCHGPT_SHARED_DIR/tokenizers/gpt2, else the network), seeds
tiktoken's file cache from that folder of official `vocab.bpe` / `encoder.json` (hash-checked),
turns a failed download into a one-line `TokenizerUnavailable`, and caches the loaded rank table.
`hub_unreachable` asks the Hugging Face hub once, so callers can skip huggingface_hub's retries.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import uuid
from pathlib import Path

import tiktoken

logger = logging.getLogger(__name__)

TOKENIZER_NAME = "gpt2"
VOCAB_SIZE = 50257
EOT_ID = 50256  # <|endoftext|>: GPT-2 and llm.c put it before every document.

BPE_DIR_ENV = "TORCHGPT_GPT2_BPE_DIR"
SHARED_DIR_ENV = "TORCHGPT_SHARED_DIR"
SHARED_BPE_SUBDIR = Path("tokenizers") / "gpt2"  # where the BPE files sit under $SHARED_DIR_ENV
OFFLINE_HINT = (
    f"offline, pass --tokenizer-dir DIR or set {BPE_DIR_ENV}=DIR (DIR holding vocab.bpe and "
    f"encoder.json), or set {SHARED_DIR_ENV} to a folder holding {SHARED_BPE_SUBDIR}/ "
    "(e.g. ../shared)"
)

# The URLs and sha256 sums tiktoken_ext/openai_public.py uses for `gpt2`; tiktoken caches each
# file as $TIKTOKEN_CACHE_DIR/<sha1(url)> and checks the sha256 itself when it reads it.
_BPE_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
GPT2_FILES: dict[str, str] = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}

# The same rank table in tiktoken's own .tiktoken text format (base64 token, rank), derived from
# the official files on first load and cached beside them: it loads in about 0.1 s where parsing
# vocab.bpe + encoder.json takes about 0.25 s, most of each prepare worker's start-up. Its
# sha256 is fixed by the official files, so it is checked like them.
_RANKS_FILE = "torchgpt-gpt2-ranks.tiktoken"
_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
_ENCODING: tiktoken.Encoding | None = None  # loaded once per process; forked workers inherit it


class TokenizerUnavailable(ValueError):
    """The GPT-2 BPE files are neither in a local folder nor cached, and fetching them failed.

    A ValueError because, like a bad path, the user fixes it (network, or the offline folder);
    every tool already turns ValueError into one `error:` line and exit code 2.
    """


def resolve_bpe_dir(bpe_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder the GPT-2 BPE files are read from, by the one rule every tool follows.

    Order: `bpe_dir` (a tool's --tokenizer-dir, a config's tokenizer_dir), else
    $TORCHGPT_GPT2_BPE_DIR, else $TORCHGPT_SHARED_DIR/tokenizers/gpt2; empty values count as
    unset. A folder chosen here must hold the files (no silent fall-through to the network).

    Returns:
        That folder, or None: the caller fetches the files (tiktoken's cache or download, the
        Hugging Face hub's `gpt2`).
    """
    return resolve_bpe_source(bpe_dir)[0]


def resolve_bpe_source(bpe_dir: str | os.PathLike | None) -> tuple[Path | None, str]:
    """`resolve_bpe_dir`'s folder (or None) and where it came from, for error messages."""
    if bpe_dir:
        return Path(bpe_dir).expanduser(), "given as --tokenizer-dir / tokenizer_dir"
    if os.environ.get(BPE_DIR_ENV):
        return Path(os.environ[BPE_DIR_ENV]).expanduser(), f"from ${BPE_DIR_ENV}"
    if os.environ.get(SHARED_DIR_ENV):
        shared = Path(os.environ[SHARED_DIR_ENV]).expanduser()
        return shared / SHARED_BPE_SUBDIR, f"from ${SHARED_DIR_ENV}"
    return None, "none set"


def hub_unreachable(timeout_s: float = 10.0) -> str | None:
    """Why the Hugging Face hub cannot be reached now, asked once with no retries.

    huggingface_hub retries a failed connection 5 times per request with backoff: about 50 s
    for the hub's `gpt2` tokenizer before transformers gives up (issue #27), 25 s for a dataset;
    one probe tells the same at once, and the caller then reads only local caches.

    Returns:
        A short reason, or None when the hub answers, when HF_HUB_OFFLINE is set (the library
        then asks the network nothing) or when huggingface_hub is not installed.
    """
    try:
        from huggingface_hub import constants, get_session
    except ImportError:
        return None
    if constants.HF_HUB_OFFLINE:
        return None
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout_s)
    except Exception as err:  # the session's transport errors (no DNS, refused, timeout)
        return f"cannot reach {constants.ENDPOINT} ({type(err).__name__})"
    return None


def check_bpe_dir(bpe_dir: str | os.PathLike, origin: str = "") -> dict[str, Path]:
    """The official `vocab.bpe` and `encoder.json` of `bpe_dir`, by name, after checking hashes.

    Args:
        bpe_dir: Folder holding both files.
        origin: Where the folder came from, for the message (see `resolve_bpe_source`).

    Raises:
        ValueError: A file is missing or its sha256 differs from the official one.
    """
    bpe_dir = Path(bpe_dir)
    where = f" (folder {origin})" if origin else ""
    files = {}
    for name, expected in GPT2_FILES.items():
        src = bpe_dir / name
        if not src.is_file():
            raise ValueError(f"GPT-2 BPE file {src} does not exist{where}; {OFFLINE_HINT}")
        actual = _sha256(src)
        if actual != expected:
            raise ValueError(
                f"refusing GPT-2 BPE file {src}: sha256 {actual} is not the official {expected}; "
                f"replace it with the file tiktoken's gpt2 encoding uses"
            )
        files[name] = src
    return files


def tiktoken_cache_dir() -> Path:
    """Return the folder tiktoken reads its cached files from, choosing torchgpt's if unset.

    When neither TIKTOKEN_CACHE_DIR nor DATA_GYM_CACHE_DIR is set, tiktoken would use a folder
    in /tmp; we set TIKTOKEN_CACHE_DIR to a per-user torchgpt folder instead so a seeded cache
    survives reboots, and so worker processes (which inherit the environment) find it too.
    """
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "torchgpt" / "tiktoken"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(path)
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def seed_tiktoken_cache(bpe_dir: str | os.PathLike, origin: str = "") -> Path:
    """Copy the GPT-2 BPE files from `bpe_dir` into tiktoken's cache after checking their hashes.

    Args:
        bpe_dir: Folder with `vocab.bpe` and `encoder.json` (e.g. ../shared/tokenizers/gpt2).
        origin: Where the folder came from, for the error message.

    Returns:
        The cache folder that now holds both files under tiktoken's names.

    Raises:
        ValueError: A file is missing or its sha256 differs from the official one.
    """
    cache = tiktoken_cache_dir()
    for name, src in check_bpe_dir(bpe_dir, origin).items():
        dst = cache / hashlib.sha1((_BPE_BASE_URL + name).encode()).hexdigest()
        if dst.is_file() and _sha256(dst) == GPT2_FILES[name]:
            continue
        cache.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f"{dst.name}.{uuid.uuid4().hex}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)  # atomic: a concurrent reader sees the old file or the whole new one
        logger.info("seeded tiktoken cache %s with %s", dst, src)
    return cache


def _ranks_file() -> Path:
    return tiktoken_cache_dir() / _RANKS_FILE


def _encoding_from_ranks() -> tiktoken.Encoding | None:
    """The gpt2 encoding from torchgpt's cached rank table, or None if absent or not intact."""
    try:
        from tiktoken_ext.openai_public import r50k_pat_str  # gpt2's pre-tokenizer regex

        data = _ranks_file().read_bytes()
    except (ImportError, OSError):
        return None
    if hashlib.sha256(data).hexdigest() != _RANKS_SHA256:
        return None
    ranks = {base64.b64decode(tok): int(rank) for tok, rank in map(bytes.split, data.splitlines())}
    return tiktoken.Encoding(
        name=TOKENIZER_NAME,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )


def _save_ranks(enc: tiktoken.Encoding) -> None:
    table = getattr(enc, "_mergeable_ranks", None)  # tiktoken keeps the ranks it was built from
    if not table:
        return
    ranks = sorted(table.items(), key=lambda item: item[1])
    data = b"".join(base64.b64encode(tok) + b" %d\n" % rank for tok, rank in ranks)
    if hashlib.sha256(data).hexdigest() != _RANKS_SHA256:
        return  # not the official gpt2 table: never cache it
    path = _ranks_file()
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs the faster start
        tmp.unlink(missing_ok=True)


def _load_with_tiktoken() -> tiktoken.Encoding:
    try:
        enc = tiktoken.get_encoding(TOKENIZER_NAME)
    except OSError as err:  # requests' ConnectionError and urllib's URLError are OSErrors
        raise TokenizerUnavailable(
            f"cannot load the GPT-2 tokenizer: vocab.bpe and encoder.json are not in the tiktoken "
            f"cache {tiktoken_cache_dir()} and downloading them from {_BPE_BASE_URL} failed "
            f"({type(err).__name__}); {OFFLINE_HINT}"
        ) from err
    _save_ranks(enc)
    return enc


def get_tokenizer(bpe_dir: str | os.PathLike | None = None) -> tiktoken.Encoding:
    """Return the GPT-2 encoding (tiktoken `gpt2`), seeding tiktoken's cache from local files.

    Args:
        bpe_dir: Folder with the official `vocab.bpe` and `encoder.json`; None follows
            `resolve_bpe_dir` ($TORCHGPT_GPT2_BPE_DIR, then $TORCHGPT_SHARED_DIR/tokenizers/gpt2);
            with no folder at all, tiktoken uses its cache or downloads the files.

    Raises:
        ValueError: The files of the chosen folder are missing or have the wrong hash.
        TokenizerUnavailable: No local folder, nothing cached and the download failed.
    """
    global _ENCODING
    if bpe_dir is None and _ENCODING is not None:
        return _ENCODING  # loaded (from checked files) by an earlier call: the env adds nothing
    folder, origin = resolve_bpe_source(bpe_dir)
    if folder is not None:
        seed_tiktoken_cache(folder, origin)  # checks given files even when already loaded
    if _ENCODING is None:
        _ENCODING = _encoding_from_ranks() or _load_with_tiktoken()
    assert _ENCODING.n_vocab == VOCAB_SIZE and _ENCODING.eot_token == EOT_ID, "not gpt2"
    return _ENCODING


def token_byte_lengths(enc: tiktoken.Encoding) -> list[int]:
    """UTF-8 bytes of each token id's text (special tokens: their literal text), for bits per
    byte: the bytes of a token sequence's decoded text are the sum of its tokens' lengths."""
    lengths = []
    for token in range(enc.n_vocab):
        try:
            lengths.append(len(enc.decode_single_token_bytes(token)))
        except KeyError:  # an id with no bytes of its own (none in gpt2)
            lengths.append(0)
    return lengths
