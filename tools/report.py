#!/usr/bin/env python
"""(Re)build a run's report from its eval results and metrics.

python tools/report.py RUN_DIR                 # -> RUN_DIR/report/
python tools/report.py RUN_DIR --out .         # e.g. the reference run's files at the top level

Writes BENCHMARK.md, LOSS_CURVE.png, SAMPLES.md and MODEL_CARD.md from RUN_DIR/eval/step-N.json
(tools/eval.py), RUN_DIR/metrics.jsonl and RUN_DIR/config.json; nothing is recomputed.
"""

from __future__ import annotations

import argparse
import logging
import sys

from torchgpt.report import build_report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir", help="training run directory")
    p.add_argument("--out", help="output folder (default RUN_DIR/report)")
    p.add_argument("--eval-dir", help="folder of step-N.json results (default RUN_DIR/eval)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        paths = build_report(args.run_dir, args.out, args.eval_dir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
