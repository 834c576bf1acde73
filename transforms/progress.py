"""Progress of a local run: records embedded of the (estimated) total, rate and time left."""

from __future__ import annotations

import logging
import sys
import time

import apache_beam as beam

__all__ = ["progress_line", "ReportProgress"]

_TERMINAL_SECONDS = 1.0  # A line refreshed in place.
_LOG_SECONDS = 30.0  # A log line, where stderr is not a terminal (files, CI, Dataflow's logs).


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def progress_line(done: int, total: int | None, elapsed: float) -> str:
    """"Embedded 1,200 of about 20,000 records (6%), 40.0 records/s, about 8 min left" (the total when known)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    text = f"Embedded {done:,}"
    if total:
        text += f" of about {max(total, done):,} records ({min(done / max(total, 1), 1.0):.0%})"
    else:
        text += " records"
    text += f", {rate:.1f} records/s"
    if total and rate > 0 and total > done:
        text += f", about {_duration((total - done) / rate)} left"
    return text


class ReportProgress(beam.DoFn):
    """Counts the elements it sees and reports now and then; outputs nothing.

    On a terminal the line is refreshed in place every second; elsewhere it is logged every 30 seconds. Each worker
    process reports its own count (one process unless --direct_num_workers says otherwise). `total` is the
    number of records expected, or None when it cannot be told cheaply (compressed input).
    """

    def __init__(self, total: int | None, clock=time.monotonic):
        self._total, self._clock = total, clock

    def setup(self):
        self._done, self._start, self._last = 0, None, 0.0
        self._terminal = sys.stderr.isatty()
        self._every = _TERMINAL_SECONDS if self._terminal else _LOG_SECONDS

    def process(self, element):
        now = self._clock()
        if self._start is None:
            self._start = self._last = now
        self._done += 1
        if now - self._last >= self._every:
            self._last = now
            self._report(now)
        return ()

    def _report(self, now: float) -> None:
        line = progress_line(self._done, self._total, now - self._start)
        if self._terminal:
            sys.stderr.write("\r" + line + " " * 8)
            sys.stderr.flush()
        else:
            logging.info("%s.", line)

    def teardown(self):
        if self._terminal and self._done:
            sys.stderr.write("\n")
