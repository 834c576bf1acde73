"""One record per id: further copies of an id become dead letters that name the copy that was kept."""

from __future__ import annotations

import apache_beam as beam

from transforms.read import FAILED_TAG, RECORDS_TAG
from transforms.records import FAILED_PREFIX, counter, make_failure, record_text

__all__ = ["DUPLICATE_REASON", "DropDuplicateIds"]

DUPLICATE_REASON = "duplicate_id"


def _kept_first(record) -> tuple:
    """The order that picks the kept copy: the same on every runner and in every run, whatever the arrival order."""
    return record.source, record.content_hash, record.texts


class _KeepOneFn(beam.DoFn):
    """(id, [Record]) -> the first Record by _kept_first, and a tagged Failure for each other copy."""

    def __init__(self):
        self._duplicates = counter(FAILED_PREFIX + DUPLICATE_REASON)

    def process(self, element):
        record_id, copies = element
        copies = sorted(copies, key=_kept_first)
        kept = copies[0]
        yield kept
        for copy in copies[1:]:
            self._duplicates.inc()
            same = "the same texts" if copy.content_hash == kept.content_hash else "other texts"
            yield beam.pvalue.TaggedOutput(FAILED_TAG, make_failure(
                copy.source, DUPLICATE_REASON,
                f"id {record_id!r} appears {len(copies)} times; kept the copy from {kept.source} "
                f"(content_hash {kept.content_hash[:16]}); this one has {same}", record_text(copy.id, copy.texts)))


class DropDuplicateIds(beam.PTransform):
    """Records -> (records with unique ids, Failures of reason "duplicate_id" for the other copies).

    Which copy is kept does not depend on the runner or the order records arrive in: the first by source path,
    then content hash. Every sink then holds one row per id, as a BigQuery MERGE keyed by id requires.
    """

    def expand(self, records):
        outputs = (records
                   | "KeyById" >> beam.Map(lambda record: (record.id, record))
                   | "GroupById" >> beam.GroupByKey()
                   | "KeepOne" >> beam.ParDo(_KeepOneFn()).with_outputs(FAILED_TAG, main=RECORDS_TAG))
        return outputs[RECORDS_TAG], outputs[FAILED_TAG]
