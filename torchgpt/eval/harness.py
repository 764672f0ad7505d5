"""lm-evaluation-harness adapter for torchgpt models, registered as the harness model `torchgpt`.

`TorchGPTLM` scores requests the way the harness's `hf` backend does (same tokenization split,
left truncation, right padding, fp32 log-softmax) but runs the lm-head only on the positions that
are scored. `run_harness_eval` is the one call the trainer and tools/eval.py make.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import Tensor

from torchgpt.data.tokenizer import EOT_ID, get_tokenizer
from torchgpt.eval.generation import Generator, head_on_rows
from torchgpt.eval.loading import check_vocab, load_model
from torchgpt.model import GPT
from torchgpt.utils.progress import Progress, is_terminal

logger = logging.getLogger(__name__)

Request = tuple[Any, list[int], list[int]]  # (request strings or None, context ids, cont ids)


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the duration (no dropout), then the caller's mode again (mid-training)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@register_model("torchgpt")
class TorchGPTLM(TemplateLM):
    """A torchgpt GPT as an lm-eval `LM`.

    Args:
        pretrained: a GPT instance (used as is, not copied) or a checkpoint path accepted by
            `torchgpt.eval.loading.load_model`.
        batch_size: requests per forward pass.
        device: where to run; a GPT instance stays where it is.
        dtype: "float32" (exact parity with `hf`) or "bfloat16" (autocast; faster on CPUs with
            AVX-512 BF16); log-probabilities are always computed in fp32.
        max_length: context window; default the model's max_seq_len.
        max_gen_toks: default generation budget for generate_until.
        shard_group: score requests on every rank of this process group (each rank holding
            the same model and the same requests): the batches, cut exactly as one rank would
            cut them, are dealt out in turn and the results gathered, so the scores are those
            of one rank, bitwise. generate_until is not sharded (each rank runs all of it).
    """

    backend = "causal"

    def __init__(
        self,
        pretrained: GPT | str = "",
        batch_size: int | str = 16,
        device: str | None = None,
        dtype: str = "float32",
        max_length: int | None = None,
        max_gen_toks: int = 256,
        shard_group: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self._shard_group = shard_group
        if isinstance(pretrained, GPT):
            self.model = pretrained
        else:
            self.model, _ = load_model(pretrained)
            if device:
                self.model.to(device)
        self._device = next(self.model.parameters()).device
        self.enc = get_tokenizer()
        check_vocab(self.model, self.enc.n_vocab, str(pretrained) if pretrained else "the model")
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(
                f"batch_size={batch_size!r}: pass a positive integer ('auto' is not supported)"
            )
        self._batch_size = int(batch_size)
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype={dtype!r} must be 'float32' or 'bfloat16'")
        self._autocast = dtype == "bfloat16"
        self._max_length = int(max_length or self.model.args.max_seq_len)
        if not 1 <= self._max_length <= self.model.args.max_seq_len:
            raise ValueError(
                f"max_length={max_length} must be in [1, the model's max_seq_len="
                f"{self.model.args.max_seq_len}]"
            )
        self._max_gen_toks = int(max_gen_toks)

    # ---- properties the harness reads ----------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return EOT_ID

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return "gpt2"

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs
    ) -> list[int]:
        # allowed_special="all": "<|endoftext|>" in text becomes the special token, as the
        # hf backend's tokenizer does; GPT-2 adds no BOS either way.
        return self.enc.encode(string, allowed_special="all")

    def tok_decode(self, tokens: list[int]) -> str:
        return self.enc.decode(tokens)

    # ---- scoring ---------------------------------------------------------------------------
    def _forward_rows(self, inputs: Tensor, rows: Tensor) -> Tensor:
        """fp32 log-probabilities (len(rows), vocab) at flattened positions `rows` of inputs."""
        ctx = (
            torch.autocast(self._device.type, dtype=torch.bfloat16)
            if self._autocast
            else contextlib.nullcontext()
        )
        with torch.no_grad(), head_on_rows(self.model, rows), ctx:
            logits = self.model(inputs)[0]  # (N, vocab)
        return F.log_softmax(logits.float(), dim=-1)

    def _score_chunk(self, chunk: list[Request]) -> list[tuple[float, bool]]:
        """Sum of continuation log-probs and greedy match for each request of one batch."""
        windows, spans = [], []
        for _, context, continuation in chunk:
            if not context or not continuation:
                raise ValueError("loglikelihood requests need non-empty context and continuation")
            # Keep the last max_length + 1 tokens; the final one is only a target (hf backend).
            window = (context + continuation)[-(self._max_length + 1) :][:-1]
            windows.append(window)
            spans.append(len(continuation))
        width = max(len(w) for w in windows)
        inputs = torch.zeros(len(windows), width, dtype=torch.long)  # right-padded with id 0
        rows, targets = [], []
        for i, (window, (_, _, continuation)) in enumerate(zip(windows, chunk, strict=True)):
            inputs[i, : len(window)] = torch.tensor(window)
            # Position p predicts token p + 1: the continuation is predicted by its last spans[i]
            # input positions.
            start = len(window) - spans[i]
            rows.extend(i * width + p for p in range(start, len(window)))
            targets.extend(continuation)
        rows_t = torch.tensor(rows, device=self._device)
        targets_t = torch.tensor(targets, device=self._device)
        logprobs = self._forward_rows(inputs.to(self._device), rows_t)  # (N, vocab)
        token_lp = logprobs.gather(1, targets_t[:, None]).squeeze(1)
        greedy = logprobs.argmax(dim=-1) == targets_t
        out, pos = [], 0
        for n in spans:
            out.append((float(token_lp[pos : pos + n].sum()), bool(greedy[pos : pos + n].all())))
            pos += n
        return out

    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, **kwargs
    ) -> list[tuple[float, bool]]:
        # Longest first, as the hf backend does: padding waste stays small within a batch.
        collator = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])))
        results = []
        # Rate and ETA on stderr, like the harness's own backends (longest requests come first,
        # so the early rate is the slowest); a line every 10 s when stderr is a log file.
        disable = getattr(self, "_progress_off", disable_tqdm)
        chunks = list(collator.get_batched(n=self.batch_size))
        rank, world = _rank_and_size(self._shard_group)
        mine = list(range(rank, len(chunks), world))  # every world-th batch, from this rank's
        total = sum(len(chunks[i]) for i in mine)
        progress = Progress(total, "loglikelihood requests", disable=disable or rank > 0)
        scored: dict[int, list[tuple[float, bool]]] = {}
        for i in mine:
            scored[i] = self._score_chunk(chunks[i])
            progress.update(len(chunks[i]))
        progress.close()
        if world > 1:
            parts: list[Any] = [None] * world
            dist.all_gather_object(parts, scored, group=self._shard_group)
            scored = {i: answers for part in parts for i, answers in part.items()}
        for i, chunk in enumerate(chunks):
            for request, answer in zip(chunk, scored[i], strict=True):
                results.append(answer)
                if request[0] is not None:
                    self.cache_hook.add_partial("loglikelihood", request[0], answer)
        return collator.get_original(results)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole strings in max_length windows (each token predicted once)."""
        windows, owners = [], []
        for index, (string,) in enumerate(req.args for req in requests):
            pairs = get_rolling_token_windows(
                token_list=self.tok_encode(string),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for context, continuation in map(make_disjoint_window, pairs):
                windows.append((None, context, continuation))
                owners.append(index)
        with _eval_mode(self.model):
            scores = self._loglikelihood_tokens(windows) if windows else []
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owners, scores, strict=True):
            totals[index] += logprob
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---- generation ------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy requests in left-padded batches of `batch_size`, each stopping on its own
        (torchgpt/eval/generation.py); sampled ones one at a time with their seed."""
        gen = Generator(self.model, self.tok_encode, self.tok_decode, self.max_length, self._device)
        args = [
            (req.args[0], normalize_gen_kwargs(req.args[1], self.max_gen_toks)) for req in requests
        ]
        with _eval_mode(self.model):
            results = gen.until(args, self._batch_size)
        for req, text in zip(requests, results, strict=True):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return results

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        # The harness's own "Tokenizing inputs" bar only on a terminal; our request progress
        # (a sparse line in a log file) follows disable_tqdm alone.
        self._progress_off = disable_tqdm
        with _eval_mode(self.model):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or not is_terminal())


def _rank_and_size(group: Any) -> tuple[int, int]:
    """This process's rank in `group` and its size; (0, 1) for no group."""
    if group is None:
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


@contextlib.contextmanager
def _every_rank_gets_results(shard_group: Any) -> Iterator[None]:
    """simple_evaluate returns its results only where LOCAL_RANK is 0 (lm-eval's guard for
    its own tensor-parallel launches); each sharded rank here computes the whole result, so
    it reads LOCAL_RANK 0 for the call."""
    if shard_group is None:
        yield
        return
    saved = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("LOCAL_RANK", None)
        else:
            os.environ["LOCAL_RANK"] = saved


@contextlib.contextmanager
def _preserve_rng() -> Iterator[None]:
    """simple_evaluate reseeds python, numpy and torch; a training run must not notice."""
    import random

    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def summarize_results(results: dict, tasks: list[str]) -> dict[str, dict[str, Any]]:
    """Per task: acc, acc_norm (+ stderr), any other metric the task reports (e.g.
    exact_match, word_perplexity), the number of items scored and the task version."""
    summary = {}
    for task in tasks:
        metrics = results["results"].get(task, {})
        entry: dict[str, Any] = {}
        for name in ("acc", "acc_norm"):
            if f"{name},none" in metrics:
                entry[name] = float(metrics[f"{name},none"])
                stderr = metrics.get(f"{name}_stderr,none")
                entry[f"{name}_stderr"] = (
                    float(stderr) if isinstance(stderr, (int, float)) else None
                )
        for key, value in metrics.items():  # any other metric a (user's) task reports
            name, _, filt = key.partition(",")
            if name not in entry and "_stderr" not in name and isinstance(value, (int, float)):
                entry[name if filt == "none" else key] = float(value)
        n = results.get("n-samples", {}).get(task, {})
        entry["num_samples"] = n.get("effective")
        entry["version"] = results.get("versions", {}).get(task)
        summary[task] = entry
    return summary


def run_harness_eval(
    model: GPT,
    tasks: list[str] | tuple[str, ...] = ("hellaswag", "arc_easy", "piqa"),
    limit: int | None = None,
    data_dir: str | None = None,
    batch_size: int = 16,
    *,
    dtype: str = "float32",
    log_samples: bool = False,
    include_paths: list[str] | tuple[str, ...] = (),
    shard_group: Any = None,
) -> dict[str, Any]:
    """Score `model` on lm-eval tasks with the harness's own prompts and metrics (0-shot).

    Safe to call on rank 0 mid-training with the plain unwrapped GPT: the model's train/eval
    mode and the global RNG states (python, numpy, torch) are restored afterwards.

    Args:
        model: an unwrapped GPT (not FSDP-sharded, not compiled).
        tasks: harness task names; any harness task works when its data can be loaded.
        limit: score only the first `limit` items of each task (None: all).
        data_dir: local task files in the hub schema (e.g. ../shared/data/eval) for
            hellaswag / arc_easy / piqa; None loads every task from the hub.
        batch_size: requests per forward pass.
        dtype: "float32" or "bfloat16" (autocast).
        log_samples: also return the harness's per-item records under "samples".
        include_paths: folders of the user's own task YAMLs (lm-eval's --include_path).
        shard_group: a process group whose every rank calls this with the same model: the
            loglikelihood batches are split across its ranks and gathered (TorchGPTLM), and
            every rank returns the same result, that of one rank.

    Returns:
        {"tasks": {task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "num_samples",
        "version"}}, "limit", "data_dir", "lm_eval_version"} (+ "samples").

    Raises:
        ValueError: unknown task, missing task data, or a vocabulary mismatch.
    """
    import tempfile

    import lm_eval
    from lm_eval.evaluator import simple_evaluate

    from torchgpt.eval.tasks import build_task_manager, load_tasks

    tasks = list(tasks)
    lm = TorchGPTLM(model, batch_size=batch_size, dtype=dtype, shard_group=shard_group)
    with (
        tempfile.TemporaryDirectory(prefix="torchgpt-tasks-") as yaml_dir,
        _preserve_rng(),
        _every_rank_gets_results(shard_group),
    ):
        manager = build_task_manager(tasks, data_dir, Path(yaml_dir), include_paths)
        loaded = load_tasks(manager, tasks, data_dir)
        results = simple_evaluate(
            model=lm,
            tasks=list(loaded["tasks"].values()),
            limit=limit,
            task_manager=manager,
            log_samples=log_samples,
        )
    return {
        "tasks": summarize_results(results, tasks),
        "limit": limit,
        "data_dir": str(data_dir) if data_dir else None,
        "include_paths": [str(f) for f in include_paths],
        "lm_eval_version": lm_eval.__version__,
        **({"samples": results.get("samples", {})} if log_samples else {}),
    }
