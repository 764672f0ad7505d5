"""Progress for long loops: a live bar on a terminal, a sparse plain line in a log file.

Off a terminal (CI logs, `nohup`, Slurm output) a redrawn bar turns into hundreds of lines, so
`quiet_bars_off_terminal()` switches third-party bars (datasets, tqdm users such as lm-eval) off
and `Progress` prints one line every `log_interval` seconds with the count, rate and ETA.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import TextIO


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return hasattr(stream, "isatty") and stream.isatty()


def quiet_bars_off_terminal() -> None:
    """When stderr is not a terminal, turn off datasets' and tqdm's default bars.

    Must run before those libraries draw; bars that pass `disable=` explicitly are not
    affected, which is why our own loops use `Progress`.
    """
    if is_terminal():
        return
    os.environ["TQDM_DISABLE"] = "1"  # for processes started from here (read at tqdm import)
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    try:
        from tqdm import std
    except ImportError:
        std = None
    if std is not None and not getattr(std.tqdm, "_torchgpt_quiet", False):
        # Already imported: make disable=True the default of every tqdm (subclasses included);
        # a caller's explicit disable= still wins, as with TQDM_DISABLE.
        std.tqdm.__init__ = functools.partialmethod(std.tqdm.__init__, disable=True)
        std.tqdm._torchgpt_quiet = True
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts `total` items: tqdm on a terminal, else a line every `log_interval` seconds.

    Args:
        total: Items expected.
        desc: What is counted, e.g. "loglikelihood requests".
        disable: No output at all.
        stream: Where to write (stderr by default).
        log_interval: Seconds between lines off a terminal.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        disable: bool = False,
        stream: TextIO | None = None,
        log_interval: float = 10.0,
    ):
        self.total, self.desc, self.disable = total, desc, disable
        self.stream = stream or sys.stderr
        self.log_interval, self.n = log_interval, 0
        self._t0 = self._last = time.perf_counter()
        self._bar = None
        if not disable and is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, file=self.stream, disable=False)

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rate = self.n / elapsed
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        pct = 100.0 * self.n / max(self.total, 1)
        return (
            f"{self.desc}: {self.n}/{self.total} ({pct:.0f}%) {rate:.1f}/s, "
            f"elapsed {_clock(elapsed)}, ETA {_clock(eta)}"
        )

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.perf_counter()
        if not self.disable and now - self._last >= self.log_interval:
            self._last = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif not self.disable:
            print(self.line(), file=self.stream, flush=True)
