"""One record per id: further copies of an id become dead letters that name the copy that was kept.

Beam's local runner holds in memory whatever crosses a stage boundary (a GroupByKey's input, a Flatten's, what
waits for a side input): grouping every record by id held the whole corpus, texts and all (see BENCHMARKS.md,
Scale). So no record waits here. The input is read once more for its ids alone, which go into a fixed-size Bloom
filter of the ids seen twice; a third read groups where the copies of the ids the filter names lie (file,
content hash, position); and every record then learns from a side input of those verdicts whether it is the copy
kept. A Bloom filter never misses a repeated id, and an id it names wrongly turns out to occur once, so the
result is that of grouping everything. Beam has no approximate-membership combiner; this one is small.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import apache_beam as beam
import numpy as np

from transforms.read import FAILED_TAG, RECORDS_TAG
from transforms.records import FAILED_PREFIX, counter, make_failure, raw_record_or_texts

__all__ = ["DUPLICATE_REASON", "DropDuplicateIds", "RepeatedIds", "FindRepeatedIds", "filter_bits"]

DUPLICATE_REASON = "duplicate_id"
_HASHES = 7  # Bit positions per id: at 16 bits per id, one id seen once in about 1,400 is named repeated.
_BITS_PER_ID = 16
_MIN_BITS, _MAX_BITS = 1 << 16, 1 << 28  # 8 KB to 32 MB per filter; past 16M ids more records are grouped.
_BATCH = 4096  # Ids hashed per numpy step.


def filter_bits(expected_ids: int | None) -> int:
    """The filter's size in bits for about `expected_ids` ids (a power of two); a million ids when unknown."""
    wanted = _BITS_PER_ID * (expected_ids if expected_ids else 1_000_000)
    return int(min(max(1 << (wanted - 1).bit_length(), _MIN_BITS), _MAX_BITS))


def _digest(record_id: str) -> bytes:
    return hashlib.blake2b(record_id.encode("utf-8"), digest_size=16).digest()


def _positions(digests: bytes, bits: int) -> np.ndarray:
    """The filter positions of each 16-byte digest (double hashing, h1 + i * h2 mod 2**64): shape (ids, _HASHES)."""
    halves = np.frombuffer(digests, dtype="<u8").reshape(-1, 2)
    steps = np.arange(_HASHES, dtype=np.uint64)
    return (halves[:, :1] + steps * halves[:, 1:]) & np.uint64(bits - 1)


def _all_set(filter_bytes: np.ndarray, positions: np.ndarray) -> np.ndarray:
    bit = (filter_bytes[positions >> np.uint64(3)] >> (positions & np.uint64(7)).astype(np.uint8)) & np.uint8(1)
    return bit.all(axis=-1)


def _set(filter_bytes: np.ndarray, positions: np.ndarray) -> None:
    np.bitwise_or.at(filter_bytes, positions >> np.uint64(3),
                     np.left_shift(np.uint8(1), (positions & np.uint64(7)).astype(np.uint8)))


class RepeatedIds:
    """A Bloom filter of the ids seen more than once: `record_id in repeated` is True for every repeated id."""

    def __init__(self, bits: int, filter_bytes: np.ndarray | None = None):
        self.bits = bits
        self.filter = filter_bytes if filter_bytes is not None else np.zeros(bits // 8, dtype=np.uint8)
        self._bytes = None

    def __contains__(self, record_id: str) -> bool:
        if self._bytes is None:  # Indexing bytes is several times faster than indexing a numpy array.
            self._bytes = self.filter.tobytes()
        digest = int.from_bytes(_digest(record_id), "little")
        first, step, mask = digest & (2**64 - 1), digest >> 64, self.bits - 1
        for i in range(_HASHES):
            position = (first + i * step) & mask
            if not self._bytes[position >> 3] >> (position & 7) & 1:
                return False
        return True

    def __getstate__(self):
        return {"bits": self.bits, "filter": self.filter}

    def __setstate__(self, state):
        self.__init__(state["bits"], state["filter"])


class _Seen:
    """FindRepeatedIds' accumulator: the ids seen (a Bloom filter), those seen twice, and ids not yet hashed."""

    def __init__(self, bits: int):
        self.seen = np.zeros(bits // 8, dtype=np.uint8)
        self.repeated = RepeatedIds(bits)
        self.pending: list[bytes] = []

    def flush(self) -> _Seen:
        """Adds the pending ids: one already seen, or twice among them, goes into the repeated filter too."""
        if not self.pending:
            return self
        digests = b"".join(self.pending)
        self.pending = []
        positions = _positions(digests, self.repeated.bits)
        _, inverse, counts = np.unique(np.frombuffer(digests, dtype="V16"), return_inverse=True, return_counts=True)
        again = _all_set(self.seen, positions) | (counts[inverse.reshape(-1)] > 1)
        _set(self.seen, positions)
        _set(self.repeated.filter, positions[again])
        return self

    def merge(self, other: _Seen) -> None:
        """An id seen on both sides is repeated: every bit of it is set in both `seen` filters."""
        self.repeated.filter |= other.repeated.filter | (self.seen & other.seen)
        self.seen |= other.seen


class FindRepeatedIds(beam.CombineFn):
    """Ids -> a RepeatedIds of `bits` bits: every id that occurs more than once, and a few that do not.

    Memory is two filters per accumulator whatever the number of ids.
    """

    def __init__(self, bits: int):
        super().__init__()
        self._bits = bits

    def create_accumulator(self):
        return _Seen(self._bits)

    def add_input(self, accumulator, record_id):
        accumulator.pending.append(_digest(record_id))
        if len(accumulator.pending) >= _BATCH:
            accumulator.flush()
        return accumulator

    def merge_accumulators(self, accumulators):
        merged, *others = [accumulator.flush() for accumulator in accumulators]
        for other in others:
            merged.merge(other)
        return merged

    def compact(self, accumulator):
        return accumulator.flush()

    def extract_output(self, accumulator):
        return accumulator.flush().repeated


class _Copy(NamedTuple):
    """What the check needs of one copy of a repeated id: where it lies and what it holds."""

    source: str
    content_hash: str
    position: int


class _Verdict(NamedTuple):
    """The copy of a repeated id that is kept (the first by source, content hash, then position) and the count."""

    kept: _Copy
    copies: int


def _copy(record) -> _Copy:
    return _Copy(record.source, record.content_hash, record.position)


def _may_repeat(record, repeated: RepeatedIds) -> bool:
    return record.id in repeated


def _verdict(element) -> list[tuple[str, _Verdict]]:
    """(id, its copies) -> [(id, the verdict)], or [] for an id the filter named that occurs once."""
    record_id, copies = element
    copies = list(copies)
    return [(record_id, _Verdict(min(copies), len(copies)))] if len(copies) > 1 else []


class _KeepOneFn(beam.DoFn):
    """Record -> the record unless another copy of its id is kept; then a tagged Failure naming the kept copy,
    holding the copy's raw line (`raw_of(source, position)`)."""

    def __init__(self, raw_of=None):
        self._duplicates = counter(FAILED_PREFIX + DUPLICATE_REASON)
        self._raw_of = raw_of

    def process(self, record, verdicts):
        verdict = verdicts.get(record.id)
        if verdict is None or _copy(record) == verdict.kept:
            yield record
            return
        self._duplicates.inc()
        kept = verdict.kept
        same = "the same texts" if record.content_hash == kept.content_hash else "other texts"
        yield beam.pvalue.TaggedOutput(FAILED_TAG, make_failure(
            record.source, DUPLICATE_REASON,
            f"id {record.id!r} appears {verdict.copies} times; kept the copy from {kept.source} "
            f"(content_hash {kept.content_hash[:16]}); this one has {same}", self._raw(record)))

    def _raw(self, record) -> str:
        return raw_record_or_texts(self._raw_of, record, record.texts)


class DropDuplicateIds(beam.PTransform):
    """Records -> (records with unique ids, Failures of reason "duplicate_id" for the other copies).

    `read_again` reads the same records once more from the pipeline's start (`ReadCorpus.records_again()`; a
    `beam.Create` of the same records in tests); it is applied twice, so that no record waits in memory for the
    verdict on its id (see the module's docstring). `expected_records` sizes the filter (`filter_bits`).
    `raw_of` (`ReadCorpus.raw_records()`) reads a dropped copy's raw line again for its dead letter: copies are
    rare, and holding every record's raw line until the verdict would double what the run holds.

    Which copy is kept does not depend on the runner or the order records arrive in: the first by source path,
    then content hash, then position in the file. Every sink then holds one row per id, as a BigQuery MERGE keyed
    by id requires.
    """

    def __init__(self, read_again: beam.PTransform, expected_records: int | None = None, raw_of=None):
        super().__init__()
        self._read_again, self._raw_of = read_again, raw_of
        self._bits = filter_bits(expected_records)

    def expand(self, records):
        pipeline = records.pipeline
        repeated = (pipeline
                    | "ReadIds" >> self._read_again
                    | "Ids" >> beam.Map(lambda record: record.id)
                    | "FindRepeatedIds" >> beam.CombineGlobally(FindRepeatedIds(self._bits)).without_defaults())
        verdicts = (pipeline
                    | "ReadRepeated" >> self._read_again
                    | "MayRepeat" >> beam.Filter(_may_repeat, beam.pvalue.AsSingleton(
                        repeated, default_value=RepeatedIds(self._bits)))
                    | "KeyById" >> beam.Map(lambda record: (record.id, _copy(record)))
                    | "GroupById" >> beam.GroupByKey()
                    | "Verdicts" >> beam.FlatMap(_verdict))
        keep_one = _KeepOneFn(self._raw_of)
        outputs = records | "KeepOne" >> beam.ParDo(keep_one, beam.pvalue.AsDict(verdicts)).with_outputs(
            FAILED_TAG, main=RECORDS_TAG)
        return outputs[RECORDS_TAG], outputs[FAILED_TAG]
