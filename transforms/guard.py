"""Decides whether a run may commit its output: the failure threshold and the deletion guard.

A run commits in one step per sink: the manifest that makes a TFRecord run complete (transforms.incremental)
and the MERGE that makes a BigQuery table current (transforms.bigquery). `CheckRun` computes one verdict from
the run's counts; both commit steps take it as a side input, so neither starts before it, and when it raises
`RunRefused` the pipeline fails with nothing committed: no manifest, no MERGE, earlier runs and tables as they
were. Dead letters are written either way, so the user can look at what failed.

Refused:
    nothing read     the input held no record at all.
    nothing embedded records were read but none was embedded (or carried forward from an earlier run).
    too many failed  more than --max_failed_fraction of the records read went to the dead letters.
    too many deleted an incremental run would drop more than --max_deleted_fraction of the earlier set.
"""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam

__all__ = ["RunRefused", "Tally", "CheckRun", "decide"]

_EXAMPLE_CHARS = 160  # Of one failed record, in the refusal line.
_TOP_REASONS = 3


class RunRefused(RuntimeError):
    """A run that must not commit; the message is the one line to show the user."""


class Tally(NamedTuple):
    """What a run produced, counted in the pipeline.

    Attributes:
        records: input records read (parsed or not).
        failed: records that went to the dead letters.
        reasons: {reason: (count, one example record)} of the failures, examples cut short.
        embedded: records embedded by this run.
        carried: records carried forward unchanged from an earlier run.
        previous: records of the earlier run (0 without --previous_output).
        deleted: ids of the earlier run gone from the corpus.
    """

    records: int
    failed: int
    reasons: dict
    embedded: int
    carried: int
    previous: int
    deleted: int


def _reasons_line(reasons: dict) -> str:
    top = sorted(reasons.items(), key=lambda item: (-item[1][0], item[0]))[:_TOP_REASONS]
    return "; ".join(f"{reason} {count} (e.g. {example})" for reason, (count, example) in top)


def decide(tally: Tally, max_failed_fraction: float, max_deleted_fraction: float, failures: str) -> Tally:
    """Returns `tally` when the run may commit; raises RunRefused with one line saying why not.

    Args:
        tally: the run's counts.
        max_failed_fraction: --max_failed_fraction.
        max_deleted_fraction: --max_deleted_fraction.
        failures: where the dead letters are, for the message.
    """
    if tally.records == 0:
        raise RunRefused("The input held no records: nothing was embedded and nothing committed. Check --input.")
    done = tally.embedded + tally.carried
    fraction = tally.failed / tally.records
    if done == 0 or fraction > max_failed_fraction:
        what = ("no record was embedded" if done == 0 else
                f"{fraction:.1%} failed, more than --max_failed_fraction {max_failed_fraction:g}")
        raise RunRefused(f"{tally.failed} of {tally.records} records failed and {what}; nothing was committed "
                         f"(no manifest, no MERGE). Reasons: {_reasons_line(tally.reasons)}. Dead letters: "
                         f"{failures}.")
    if tally.previous and tally.deleted / tally.previous > max_deleted_fraction:
        raise RunRefused(f"This run would delete {tally.deleted} of the {tally.previous} records of the earlier "
                         f"output ({tally.deleted / tally.previous:.1%}, more than --max_deleted_fraction "
                         f"{max_deleted_fraction:g}); nothing was committed. If the corpus really shrank, rerun "
                         "with --max_deleted_fraction 1; else check --input, --input_format and --text_field.")
    return tally


class _FailureReasons(beam.CombineFn):
    """Failures -> {reason: (count, the smallest example)}: deterministic on every runner."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, failure):
        reason, example = failure.reason, failure.record[:_EXAMPLE_CHARS]
        count, best = accumulator.get(reason, (0, example))
        accumulator[reason] = (count + 1, min(best, example))
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            for reason, (count, example) in accumulator.items():
                total, best = merged.get(reason, (0, example))
                merged[reason] = (total + count, min(best, example))
        return merged

    def extract_output(self, accumulator):
        return accumulator


def _combined(pcoll, label: str, combine_fn: beam.CombineFn, empty):
    """The one value of `combine_fn` over `pcoll`, as a side input; `empty` where pcoll has no element.

    Without CombineGlobally's own default (a Create, a side input and a FlatMap per combine), whose machinery
    made up a quarter of the run's graph: the combines here then took about half a second of every run's start to
    build and translate (see BENCHMARKS.md). The side input supplies the default instead.
    """
    combined = pcoll | label >> beam.CombineGlobally(combine_fn).without_defaults()
    return beam.pvalue.AsSingleton(combined, default_value=empty)


class CheckRun(beam.PTransform):
    """Counts a run's parts and decides (see `decide`): a one-element PCollection of the Tally, or a failed run.

    Applied to a dict of PCollections: `parsed` (records read and parsed), `read_failures` and `failures`
    (transforms.records.Failures: those of reading, and every one that counts as a failed record), `embedded`,
    and optionally `carried`, `previous` and `deleted` for incremental runs, and `after`: a step's output to
    wait for (the written dead-letter files, so a refused run still leaves them for the user). Use the result
    as a side input (`beam.pvalue.AsSingleton`) of every step that commits.
    """

    def __init__(self, max_failed_fraction: float, max_deleted_fraction: float, failures: str):
        super().__init__()
        self._max_failed, self._max_deleted, self._failures = max_failed_fraction, max_deleted_fraction, failures

    def expand(self, parts: dict):
        pipeline = parts["parsed"].pipeline
        empty = pipeline | "NoElements" >> beam.Create([])
        counts = {name: _combined(parts.get(name, empty), f"Count{name.title()}", beam.combiners.CountCombineFn(), 0)
                  for name in ("parsed", "read_failures", "embedded", "carried", "previous", "deleted")}
        failure_lines = parts["failures"]
        reasons = _combined(failure_lines, "FailureReasons", _FailureReasons(), {})
        after = beam.pvalue.AsList(parts.get("after", empty))
        return (pipeline
                | "One" >> beam.Create([None])
                | "Decide" >> beam.Map(self._decide, reasons=reasons, after=after, **counts))

    def _decide(self, _, parsed, read_failures, reasons, embedded, carried, previous, deleted, after):
        failed = sum(count for count, _example in reasons.values())  # Every failure counts under its reason.
        tally = Tally(records=parsed + read_failures, failed=failed, reasons=reasons, embedded=embedded,
                      carried=carried, previous=previous, deleted=deleted)
        return decide(tally, self._max_failed, self._max_deleted, self._failures)
