"""The fixed prompts (configs/eval_prompts.toml) and their greedy and seeded-sampled continuations.

Samples show the learning trajectory in SAMPLES.md: the same prompts, the same sampling seeds,
one set per checkpoint.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchgpt.data.tokenizer import EOT_ID, get_tokenizer
from torchgpt.model import GPT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_PROMPTS_FILE = Path(__file__).resolve().parents[2] / "configs" / "eval_prompts.toml"


@dataclass
class SampleSettings:
    """How continuations are drawn; stored with the samples so they can be reproduced."""

    max_new_tokens: int = 48
    temperature: float = 0.8
    top_k: int | None = 50
    seed: int = 1234
    """Prompt i is sampled with seed + i, so adding a prompt never changes the others."""


@dataclass
class PromptSet:
    """The prompts and the sampling settings read from a prompts TOML file."""

    prompts: list[str]
    settings: SampleSettings = field(default_factory=SampleSettings)


def load_prompts(path: str | os.PathLike | None = None) -> PromptSet:
    """Read `[[prompts]] text = ...` entries and an optional `[generation]` table.

    Raises:
        ValueError: the file is missing, not TOML, has no prompts or unknown generation keys.
    """
    path = Path(path or DEFAULT_PROMPTS_FILE)
    if not path.is_file():
        raise ValueError(f"prompts file {path} does not exist; pass --prompts FILE")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"prompts file {path} is not valid TOML: {e}") from e
    entries = data.get("prompts", [])
    prompts = [e.get("text") for e in entries if isinstance(e, dict)]
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ValueError(f'{path} needs [[prompts]] tables each with a non-empty text = "..."')
    gen = data.get("generation", {})
    known = set(SampleSettings.__dataclass_fields__)
    if set(gen) - known:
        raise ValueError(
            f"{path} [generation] has unknown keys {sorted(set(gen) - known)}; known: "
            f"{sorted(known)}"
        )
    return PromptSet(prompts, SampleSettings(**gen))


@torch.no_grad()
def generate_samples(
    model: GPT, prompts: list[str], settings: SampleSettings | None = None
) -> list[dict[str, Any]]:
    """Greedy and seeded-sampled continuations of each prompt.

    Returns:
        One {"prompt", "greedy", "sampled", "seed"} per prompt; continuations exclude the prompt
        and stop at <|endoftext|>.
    """
    settings = settings or SampleSettings()
    enc = get_tokenizer()
    device = next(model.parameters()).device
    out = []
    for i, prompt in enumerate(prompts):
        ids = enc.encode(prompt, allowed_special="all")
        tokens = torch.tensor([ids], device=device)
        texts = {}
        for name, temperature, seed in (
            ("greedy", 0.0, None),
            ("sampled", settings.temperature, settings.seed + i),
        ):
            new = model.generate(
                tokens,
                settings.max_new_tokens,
                temperature=temperature,
                top_k=settings.top_k,
                seed=seed,
                eos_id=EOT_ID,
            )[0, len(ids) :].tolist()
            if EOT_ID in new:
                new = new[: new.index(EOT_ID)]
            texts[name] = enc.decode(new)
        out.append({"prompt": prompt, **texts, "seed": settings.seed + i})
    return out


def settings_dict(settings: SampleSettings) -> dict[str, Any]:
    """The settings as a JSON-ready dict (stored in each eval JSON)."""
    return asdict(settings)
