"""generate_until for the harness adapter: greedy requests decoded in left-padded batches.

Requests are grouped by their generation arguments (as the harness's `hf` backend does), sorted
by prompt length so a batch pads little, and decoded `batch_size` at a time with one KV cache:
prompts are left-padded (GPT.forward's `pad`: each row keeps its own positions and never
attends to padding), and each row stops at its own stop string, <|endoftext|> or budget; the
batch ends when every row has. Sampled requests (do_sample with temperature > 0) are decoded one
at a time with their own seeded generator, so their draws do not depend on the batch.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import torch
from lm_eval.models.utils import handle_stop_sequences, postprocess_generated_text
from torch import Tensor

from torchgpt.data.tokenizer import EOT_ID
from torchgpt.model import GPT, KVCache
from torchgpt.model.generate import sample_next


@contextlib.contextmanager
def head_on_rows(model: GPT, rows: Tensor) -> Iterator[None]:
    """Make `model(tokens)` return logits only for the flattened (B*T) positions `rows`.

    A forward hook on the final norm keeps just those rows, so the lm-head matmul (most of the
    cost of a small model with a 50k vocabulary) runs on the scored tokens only and the model's
    own forward code is used unchanged. Output shape: (1, len(rows), vocab).
    """

    def keep_rows(module, inputs, output):
        return output.flatten(0, 1).index_select(0, rows).unsqueeze(0)

    handle = model.norm.register_forward_hook(keep_rows)
    try:
        yield
    finally:
        handle.remove()


class Generator:
    """Decodes prompts (strings) with `model`; `encode` / `decode` are the tokenizer's."""

    def __init__(
        self,
        model: GPT,
        encode: Callable[[str], list[int]],
        decode: Callable[[list[int]], str],
        max_length: int,
        device: torch.device,
    ) -> None:
        self.model, self.encode, self.decode = model, encode, decode
        self.max_length, self.device = max_length, device

    def _settings(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(kwargs)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=self.decode([EOT_ID]))
        max_new = int(kwargs.pop("max_gen_toks"))
        temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample") else 0.0
        if max_new >= self.max_length:
            raise ValueError(f"max_gen_toks={max_new} must be < max_length={self.max_length}")
        return {
            "until": until,
            "max_new": max_new,
            "temperature": temperature,
            "top_k": kwargs.pop("top_k", None),
            "top_p": kwargs.pop("top_p", None),
            "seed": int(kwargs.get("seed", 0)),
        }

    def _prompt(self, context: str, max_new: int) -> list[int]:
        return self.encode(context)[-(self.max_length - max_new) :] or [EOT_ID]

    def _stopped(self, out: list[int], until: list[str]) -> bool:
        return any(stop and stop in self.decode(out) for stop in until)

    @torch.inference_mode()
    def one(self, context: str, kwargs: dict[str, Any]) -> str:
        """One request, sampled or greedy, with its own seeded generator."""
        s = self._settings(kwargs)
        prompt = self._prompt(context, s["max_new"])
        tokens = torch.tensor([prompt], device=self.device)
        cache = KVCache(self.model.args.n_layers, len(prompt) + s["max_new"])  # what it can hold
        with head_on_rows(self.model, torch.tensor([len(prompt) - 1], device=self.device)):
            logits = self.model(tokens, kv_cache=cache, start_pos=0)  # (1, 1, V): last token
        generator = torch.Generator(device=self.device).manual_seed(s["seed"])
        out: list[int] = []
        for step in range(s["max_new"]):
            token = sample_next(logits[:, -1], s["temperature"], s["top_k"], s["top_p"], generator)
            if int(token) == EOT_ID:
                break
            out.append(int(token))
            if self._stopped(out, s["until"]):
                break
            logits = self.model(token[:, None], kv_cache=cache, start_pos=len(prompt) + step)
        return postprocess_generated_text(self.decode(out), s["until"], None)

    @torch.inference_mode()
    def batch(self, contexts: list[str], kwargs: dict[str, Any]) -> list[str]:
        """Greedy decoding of `contexts` together (left-padded), each stopping on its own."""
        s = self._settings(kwargs)
        prompts = [self._prompt(c, s["max_new"]) for c in contexts]
        width = max(len(p) for p in prompts)
        pad = torch.tensor([width - len(p) for p in prompts], device=self.device)
        tokens = torch.tensor(
            [[EOT_ID] * (width - len(p)) + p for p in prompts], device=self.device
        )
        cache = KVCache(self.model.args.n_layers, width + s["max_new"])  # no more is ever written
        last = torch.arange(len(prompts), device=self.device) * width + width - 1
        with head_on_rows(self.model, last):  # the prefill's lm-head on each row's last token
            logits = self.model(tokens, kv_cache=cache, start_pos=0, pad=pad)
        logits = logits.transpose(0, 1)  # (1, B, V) -> (B, 1, V)
        outs: list[list[int]] = [[] for _ in prompts]
        live = list(range(len(prompts)))  # the prompts the batch's rows decode, in row order
        for step in range(s["max_new"]):
            token = sample_next(logits[:, -1], 0.0)  # (B,) greedy, as `one` with temperature 0
            still = []
            for row, tok in enumerate(token.tolist()):
                i = live[row]
                if tok != EOT_ID:
                    outs[i].append(tok)
                if tok != EOT_ID and not self._stopped(outs[i], s["until"]):
                    still.append(row)
            if not still:
                break
            if len(still) <= 3 * len(live) // 4:  # drop finished rows once a quarter is done
                keep = torch.tensor(still, device=self.device)
                token, pad = token[keep], pad[keep]
                cache.keep_rows(keep)
                live = [live[row] for row in still]
            logits = self.model(token[:, None], kv_cache=cache, start_pos=width + step, pad=pad)
        return [postprocess_generated_text(self.decode(o), s["until"], None) for o in outs]

    def until(self, requests: list[tuple[str, dict]], batch_size: int) -> list[str]:
        """Every (context, normalized gen kwargs) request, results in request order."""
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, (_, kwargs) in enumerate(requests):
            groups.setdefault(json.dumps(kwargs, sort_keys=True, default=str), []).append(i)
        for indices in groups.values():
            kwargs = requests[indices[0]][1]
            sampled = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature", 0.0)) > 0
            if sampled or batch_size == 1:
                for i in indices:
                    results[i] = self.one(requests[i][0], kwargs)
                continue
            by_length = sorted(indices, key=lambda i: -len(self.encode(requests[i][0])))
            for start in range(0, len(by_length), batch_size):
                chunk = by_length[start : start + batch_size]
                texts = self.batch([requests[i][0] for i in chunk], kwargs)
                for i, text in zip(chunk, texts, strict=True):
                    results[i] = text
        return results  # type: ignore[return-value]
