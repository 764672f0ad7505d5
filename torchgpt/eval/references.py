"""Published zero-shot scores of reference models, each with its source, for BENCHMARK.md.

Only numbers whose source we could read are listed; a value marked approximate comes from a
third-party run and is shown with "~". Missing entries stay blank in the report rather than
being filled with remembered figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reference:
    """One reference row: scores keyed "task/metric" (e.g. "hellaswag/acc_norm")."""

    name: str
    params: str
    tokens: str
    scores: dict[str, float]
    source: str
    approximate: frozenset[str] = field(default_factory=frozenset)
    """Keys of `scores` that come from a third-party run, shown as approximate."""


# Chance = 1 / number of choices: HellaSwag 4 endings, ARC-Easy (almost always) 4 options,
# PIQA 2 solutions. acc_norm has the same chance level.
CHANCE = Reference(
    name="chance",
    params="-",
    tokens="-",
    scores={
        "hellaswag/acc": 0.25,
        "hellaswag/acc_norm": 0.25,
        "arc_easy/acc": 0.25,
        "arc_easy/acc_norm": 0.25,
        "piqa/acc": 0.50,
        "piqa/acc_norm": 0.50,
    },
    source="1 / number of answer choices (4, 4, 2)",
)

REFERENCES: tuple[Reference, ...] = (
    Reference(
        name="GPT-2 124M (OpenAI)",
        params="124M",
        tokens="n/a (WebText)",
        scores={"hellaswag/acc": 0.2892, "hellaswag/acc_norm": 0.3114},
        source=(
            "lm-evaluation-harness 0-shot HellaSwag as quoted in karpathy/build-nanogpt "
            "hellaswag.py (acc 28.92%, acc_norm 31.14%); ARC-Easy/PIQA left out: no source "
            "we could check"
        ),
    ),
    Reference(
        name="Pythia-160M, step 123000 of 143000 (EleutherAI)",
        params="162M",
        tokens="258B (123000 x 2.1M)",
        scores={
            "hellaswag/acc_norm": 0.3082,
            "arc_easy/acc": 0.4306,
            "arc_easy/acc_norm": 0.3965,
            "piqa/acc": 0.6181,
            "piqa/acc_norm": 0.6186,
        },
        approximate=frozenset({"hellaswag/acc_norm"}),
        source=(
            "ARC-Easy, PIQA: EleutherAI/pythia evals/pythia-v1/pythia-160m/zero-shot/"
            "160m_step123000.json (older harness, 0-shot; the final-step file was not available "
            "to us). HellaSwag (~, final checkpoint, third-party lm-eval run): "
            "huggingface.co/davidhornshaw/pythia_160m_eval"
        ),
    ),
)
