"""`torchgpt-lm-eval`: lm-evaluation-harness's own command line, with `--model torchgpt`.

    torchgpt-lm-eval --model torchgpt --model_args pretrained=RUN_DIR_OR_CHECKPOINT \
        --tasks hellaswag,arc_easy [--include_path DIR] [--output_path OUT] ...

Every argument, table and output file is the harness's (`lm_eval run --help`): this only
registers the torchgpt model first. lm-eval 0.4.x has no entry-point discovery for models, so
a plain `lm_eval --model torchgpt` cannot find it; this console script is the supported way.
Without `--device`, the device is chosen here: the first GPU when there is one, else the CPU
(the harness's own default, cuda:0, fails on a machine without one).
"""

from __future__ import annotations

import sys


def default_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def with_device(argv: list[str]) -> list[str]:
    """`argv` plus `--device <auto>` when it names no device (and is a run, not --help)."""
    if any(a == "--device" or a.startswith("--device=") for a in argv):
        return argv
    if not any(a == "--model" or a.startswith("--model=") for a in argv):
        return argv  # a subcommand such as `ls` or `validate`, or --help
    return [*argv, "--device", default_device()]


def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    import torchgpt.eval.harness  # noqa: F401  registers "torchgpt" in lm-eval's model registry

    sys.argv = [sys.argv[0], *with_device(list(sys.argv[1:] if argv is None else argv))]
    cli_evaluate()


if __name__ == "__main__":
    main()
