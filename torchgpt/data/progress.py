"""A one-line progress display for long data jobs: documents/s, tokens/s and ETA, on stderr.

Redraws in place on a terminal and prints a plain line every `log_interval` seconds otherwise
(so CI logs and `nohup` files stay readable).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress of a job counted in documents and tokens.

    Args:
        total_docs: Documents expected, if known (drives the ETA when `total_tokens` is unset).
        total_tokens: Tokens expected, if known (e.g. a --max-tokens cap).
        enabled: False makes every method a no-op.
        stream: Where to draw; stderr by default.
        tty_interval: Seconds between redraws on a terminal.
        log_interval: Seconds between lines when `stream` is not a terminal.
    """

    def __init__(
        self,
        total_docs: int | None = None,
        total_tokens: int | None = None,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        tty_interval: float = 0.5,
        log_interval: float = 30.0,
    ):
        self.total_docs, self.total_tokens, self.enabled = total_docs, total_tokens, enabled
        self.stream = stream or sys.stderr
        self.is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = tty_interval if self.is_tty else log_interval
        self._t0 = self._last = time.perf_counter()
        self._base = (0, 0)
        self._now = (0, 0)

    def start(self, docs: int = 0, tokens: int = 0) -> None:
        """Start the clock; counts already done (a resumed run) do not enter the rates."""
        self._t0 = self._last = time.perf_counter()
        self._base = self._now = (docs, tokens)

    def line(self) -> str:
        """The current progress line."""
        docs, tokens = self._now
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        doc_rate = (docs - self._base[0]) / elapsed
        tok_rate = (tokens - self._base[1]) / elapsed
        text = f"{_si(docs)} docs ({_si(doc_rate)}/s) | {_si(tokens)} tokens ({_si(tok_rate)}/s)"
        if self.total_tokens and tok_rate > 0:
            done, eta = tokens / self.total_tokens, (self.total_tokens - tokens) / tok_rate
        elif self.total_docs and doc_rate > 0:
            done, eta = docs / self.total_docs, (self.total_docs - docs) / doc_rate
        else:
            return f"{text} | {_clock(elapsed)} elapsed"
        return f"{text} | {100 * min(done, 1.0):.1f}% | ETA {_clock(max(eta, 0))}"

    def update(self, docs: int, tokens: int) -> None:
        """Record the counts so far and redraw if the interval has passed."""
        self._now = (docs, tokens)
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._draw(final=False)

    def close(self) -> None:
        """Draw the final line."""
        if self.enabled:
            self._draw(final=True)

    def _draw(self, final: bool) -> None:
        if self.is_tty:
            self.stream.write("\r\033[K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
