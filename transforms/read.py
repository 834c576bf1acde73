"""Reads corpus files (text, JSONL, CSV, TSV, TFRecord) into records to embed, with a dead-letter output."""

import base64
import csv
import functools
import itertools
import json
import os
import typing

import apache_beam as beam
from apache_beam.io import fileio, textio
from apache_beam.io.filebasedsource import ReadAllFiles
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms import framing
from transforms.examples import parse_example, value_kind
from transforms.limits import UNSTORABLE_REASON, SinkLimits
from transforms.records import (
    FAILED_PREFIX,
    KEPT_FIELD_MISMATCH,
    RECORDS_READ,
    Column,
    Failure,
    Record,
    content_hash,
    counter,
    derived_id,
    make_failure,
    typed_value,
)

__all__ = [
    "FAILED_TAG",
    "FAILURE_REASONS",
    "FORMATS",
    "RECORDS_TAG",
    "ReadCorpus",
    "check_inputs_exist",
    "example_field_value",
    "infer_format",
    "raw_record",
    "read_file_records",
]

FORMATS = ("text", "jsonl", "csv", "tsv", "tfrecord")

RECORDS_TAG = "records"
FAILED_TAG = "failed"

FAILURE_REASONS = (
    "invalid_json",
    "csv_field_count",
    "missing_field",
    "empty_text",
    "not_a_string",
    "undecodable_bytes",
    "not_a_tf_example",
    "invalid_unicode",
    "corrupt_record",
    "truncated_file",
    "corrupt_file",
    UNSTORABLE_REASON,
)


_NO_LIMITS = SinkLimits()

_EXTENSIONS = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tfrecord": "tfrecord",
    ".tfrec": "tfrecord",
}
# The suffixes Beam's CompressionTypes.AUTO decompresses; the format is named by the extension before them.
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".deflate", ".zst", ".zstd", ".xz", ".lzma")

# CSV follows RFC 4180 quoting; TSV follows the IANA text/tab-separated-values definition (no quoting at all),
# so a text that starts with a quote keeps it.
_CSV_DIALECTS = {
    "csv": {"delimiter": ",", "strict": True},
    "tsv": {"delimiter": "\t", "quoting": csv.QUOTE_NONE, "strict": True},
}


def infer_format(patterns: list[str]) -> str:
    """Infers the input format from the file extensions of the input patterns.

    Compression suffixes (`.gz`, `.bz2`, ...) are ignored; Beam decompresses those files on read.
    Recognised: `.txt`/`.text` (text), `.jsonl`/`.json`/`.ndjson` (jsonl), `.csv`, `.tsv`,
    `.tfrecord`/`.tfrec` (tfrecord).

    Args:
        patterns: File paths or glob patterns, local or `gs://`.

    Returns:
        One of `FORMATS`.

    Raises:
        ValueError: If there are no patterns, an extension is not recognised, or the patterns disagree.
    """
    if not patterns:
        raise ValueError("No input patterns given: pass at least one file or glob pattern.")
    formats = {}
    for pattern in patterns:
        name = pattern.lower()
        for suffix in _COMPRESSION_SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        input_format = _EXTENSIONS.get(os.path.splitext(name)[1])
        if input_format is None:
            raise ValueError(
                f"Cannot infer the input format of {pattern!r} from its extension "
                f"(known: {', '.join(sorted(_EXTENSIONS))}): "
                f"pass --input_format (one of {', '.join(FORMATS)})."
            )
        formats[pattern] = input_format
    if len(set(formats.values())) > 1:
        found = ", ".join(f"{pattern!r} is {fmt}" for pattern, fmt in formats.items())
        raise ValueError(
            f"The input patterns have mixed formats ({found}): read one format per run, "
            f"or pass --input_format (one of {', '.join(FORMATS)}) to read them all as one."
        )
    return next(iter(formats.values()))


def check_inputs_exist(patterns: list[str]) -> list[str]:
    """Checks that every input pattern matches at least one file.

    Beam's readers of a collection of patterns read nothing, silently, from a pattern that matches no file, so
    the pipeline calls this before it builds the graph.

    Args:
        patterns: File paths or glob patterns, local or `gs://`.

    Returns:
        The sorted paths of the matched files, each once.

    Raises:
        ValueError: If there are no patterns, a pattern matches no file, or a pattern cannot be listed.
    """
    if not patterns:
        raise ValueError("No input patterns given: pass at least one file or glob pattern.")
    try:
        results = FileSystems.match(list(patterns))
    except BeamIOError as err:
        raise ValueError(f"Cannot list the input patterns: {err}") from err
    unmatched = [result.pattern for result in results if not result.metadata_list]
    if unmatched:
        raise ValueError(
            f"Input pattern(s) matched no files: {', '.join(map(repr, unmatched))}. "
            "Check the paths, and separate several patterns with commas."
        )
    return sorted({metadata.path for result in results for metadata in result.metadata_list})


class ReadCorpus(beam.PTransform):
    """Reads corpus files into `Record`s, and the records it cannot read into `Failure`s.

    Every input line (text, jsonl, csv, tsv) or TFRecord record becomes exactly one `Record` or one `Failure`:
    nothing is dropped silently, blank lines included (reason "empty_text"). A file that cannot be read to its
    end adds one `Failure` for its unread rest, naming the file and how far it was read, and its records before
    the break are read: a compressed stream that breaks off ("truncated_file") or cannot be decompressed
    ("corrupt_file"), a TFRecord file that ends inside a record ("truncated_file") or whose record length fails
    its CRC ("corrupt_record"). A TFRecord whose data fails its CRC is one "corrupt_record" and reading goes
    on. The Beam counters `embeddings/records_read` and `embeddings/failed_<reason>` count them.

    Formats:
        text: one text per line; ids are always derived from the content.
        jsonl: one JSON object per line; `text_field` must be a string, `id_field` a string or an integer.
        csv, tsv: the first line of every file (every shard) is its header, and each further line is one row.
            CSV uses RFC 4180 quoting; TSV has no quoting (quotes are text). A quoted field spanning several
            lines is not supported: its pieces become "csv_field_count" failures.
        tfrecord: serialised `tf.train.Example`s; `text_field` is a bytes feature with exactly one value,
            `id_field` a bytes or int64 feature with one value.

    Kept fields (`keep_fields`, --keep_fields) are read from the same JSON object, CSV row or Example, each as
    a value of its column's type (records.typed_value): a field the record lacks is None, and a value that does
    not fit its type is None too, counted as `embeddings/kept_field_mismatch`. CSV and TSV values are strings;
    an Example feature with one value is that value, with another count a list.

    A record without an id (field absent, null or empty) gets `"sha256:"` followed by the first 16 hex digits
    of its content hash, so the same texts get the same id in every run.

    The transform applies to the pipeline (`PBegin`) and returns Beam's `DoOutputsTuple` with the records
    as its main output (tag `RECORDS_TAG`) and the failures under `FAILED_TAG`. Unpack it or use the tags::

        records, failures = pipeline | "ReadCorpus" >> ReadCorpus(patterns, "jsonl")
        outputs = pipeline | "ReadCorpus" >> ReadCorpus(patterns, "jsonl")
        records, failures = outputs[RECORDS_TAG], outputs[FAILED_TAG]

    Call `check_inputs_exist(patterns)` first: a pattern that matches no file reads as empty. A file matched
    by two patterns is read once.
    """

    def __init__(
        self,
        patterns: list[str],
        input_format: str,
        id_field: str = "id",
        text_field: str = "text",
        pair_fields: tuple[str, str] | None = None,
        keep_fields: tuple[Column, ...] = (),
        counted: bool = True,
        limits: SinkLimits = _NO_LIMITS,
        listing: dict | None = None,
    ):
        """Initialises the transform.

        Args:
            patterns: File paths or glob patterns, local or `gs://`; each may match many shards.
            input_format: One of `FORMATS`; see `infer_format`.
            id_field: The field (JSON key, CSV column, Example feature) that holds the record's id.
            text_field: The field that holds the text to embed; unused in pair mode.
            pair_fields: Two fields whose texts are embedded as a pair, or None for one text per record.
            keep_fields: Fields carried to the sinks beside the embedding, with their column types.
            counted: Whether the Beam counters count what is read; False for a second read of the same input.
            limits: What the run's sinks cannot hold: a record with such an id or kept value is a Failure of
                reason "unstorable_value" (transforms.limits).
            listing: Another ReadCorpus's `listing` of the same patterns, to reuse (records_again passes its
                reader's): whether the files are compressed and the matched files, one listing of the input for
                all reads (a round trip each on GCS, and fewer steps).

        Raises:
            ValueError: If there are no patterns, the format is unknown, or pair mode or kept fields are asked
                of `text`.
        """
        super().__init__()
        if isinstance(patterns, str):
            patterns = [patterns]
        self._patterns = list(dict.fromkeys(patterns))
        if not self._patterns:
            raise ValueError("No input patterns given: pass at least one file or glob pattern.")
        if input_format not in FORMATS:
            raise ValueError(f"Unknown --input_format {input_format!r}: use one of {', '.join(FORMATS)}.")
        if pair_fields is not None:
            if input_format == "text":
                raise ValueError(
                    "Pair mode needs named fields, which the 'text' --input_format does not have: "
                    "use jsonl, csv, tsv or tfrecord."
                )
            if len(pair_fields) != 2 or not all(pair_fields) or pair_fields[0] == pair_fields[1]:
                raise ValueError(f"pair_fields must be two different field names, got {pair_fields!r}.")
            pair_fields = tuple(pair_fields)
        if keep_fields and input_format == "text":
            raise ValueError("--keep_fields needs named fields, which the 'text' --input_format does not have.")
        self._input_format = input_format
        self._id_field = id_field
        self._text_field = text_field
        self._pair_fields = pair_fields
        self._keep_fields = tuple(keep_fields)
        self._counted = counted
        self._limits = limits
        self.listing = listing if listing is not None else {"kinds": set(), "files": None}

    def records_again(self) -> beam.PTransform:
        """PBegin -> the same records read once more, uncounted, without their failures or kept fields (see
        transforms.dedupe, which needs ids, sources, content hashes and positions)."""
        return _RecordsOnly(ReadCorpus(self._patterns, self._input_format, self._id_field, self._text_field,
                                       self._pair_fields, counted=False, limits=self._limits, listing=self.listing))

    def raw_records(self):
        """A picklable function (source, position) -> the raw record there as a dead letter shows it (raw_record):
        for the Failures of records already read, duplicate ids (transforms.dedupe)."""
        return functools.partial(raw_record, input_format=self._input_format)

    def expand(self, pbegin):
        files = self.listing["files"]
        if files is None or files.pipeline is not pbegin.pipeline:
            files = self.listing["files"] = self._match(pbegin)
        if self._input_format == "tfrecord":
            # Beam's ReadAllFromTFRecord raises on a bad CRC or a truncated record, failing the bundle and so
            # the run; reading the framing ourselves dead-letters the record instead. Beam does not split
            # TFRecord files either (they have no sync markers), so one file per element loses nothing.
            keyed_raw = (
                files
                | "ReshuffleFiles" >> beam.Reshuffle()
                | "ReadTFRecord" >> beam.ParDo(_ReadTFRecordsFn())
            )
        else:
            kinds = self.listing["kinds"]
            if not kinds:
                kinds.update(_compressions(self._patterns))
            keyed_raw = self._read_lines(files, set(kinds))
        return keyed_raw | "ParseRecords" >> beam.ParDo(
            _ParseRecordsFn(self._input_format, self._id_field, self._text_field, self._pair_fields,
                            self._keep_fields, self._counted, self._limits)
        ).with_outputs(FAILED_TAG, main=RECORDS_TAG)

    def _match(self, pbegin):
        """PBegin -> the FileMetadata of every file the patterns match, each once."""
        # A pattern that matches nothing reads as empty, as in Beam's ReadAll transforms (see check_inputs_exist).
        files = (
            pbegin
            | "Patterns" >> beam.Create(self._patterns)
            | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
        )
        if len(self._patterns) == 1:
            return files
        # Two patterns may match one file. Read it once: transforms.dedupe tells copies of an id apart by file and
        # position, so the records of a file read twice would both be kept.
        return (files
                | "KeyByPath" >> beam.Map(lambda metadata: (metadata.path, metadata))
                | "GroupByPath" >> beam.GroupByKey()
                | "OncePerFile" >> beam.MapTuple(lambda _path, copies: next(iter(copies))))

    def _read_lines(self, files, compressions: set[bool]):
        """Matched text files -> (path, position, line) and the Failures of files that break off.

        Plain files keep Beam's splittable reader. Beam's CompressedFile ends silently where a compressed stream
        breaks off (the rest of the file is lost without a word) and raises on corrupt data (failing the run);
        compressed files cannot be split anyway, so they are read here, one per element, and a break is one
        dead letter. Only an input of both kinds gets both readers: a local runner holds in memory every element
        that crosses a Flatten of the two, so the whole corpus. (A file of the other kind that appears after
        the pipeline was built is still read: the compressed reader reads plain files, Beam's reader
        decompresses.)
        """
        skip_header = self._input_format in _CSV_DIALECTS
        if compressions == {False}:
            return files | "ReadText" >> self._plain_reader(skip_header)
        if compressions == {True}:
            return files | "ReadCompressedText" >> self._compressed_reader(skip_header)
        plain, compressed = files | "SplitCompressed" >> beam.Partition(_by_compression, 2)
        return ((plain | "ReadText" >> self._plain_reader(skip_header),
                 compressed | "ReadCompressedText" >> self._compressed_reader(skip_header))
                | "AllLines" >> beam.Flatten())

    @staticmethod
    def _plain_reader(skip_header: bool):
        # As beam.io.ReadAllFromText(coder=BytesCoder(), with_filename=True) reads, each line with its position.
        source = functools.partial(_PositionedTextSource, min_bundle_size=0, compression_type=CompressionTypes.AUTO,
                                   strip_trailing_newlines=True, coder=beam.coders.BytesCoder(), validate=False,
                                   skip_header_lines=1 if skip_header else 0)
        return ReadAllFiles(True, CompressionTypes.AUTO, textio.ReadAllFromText.DEFAULT_DESIRED_BUNDLE_SIZE, 0, source,
                            False)

    @staticmethod
    def _compressed_reader(skip_header: bool):
        return "Reshuffle" >> beam.Reshuffle() | "Read" >> beam.ParDo(_ReadCompressedLinesFn(skip_header))


class _PositionedTextSource(textio._TextSource):  # noqa: SLF001  No public reader gives a line's position.
    """Beam's text source, each line as `(file name, byte offset of its start, line)`.

    Beam's reader claims every line's start offset in the range tracker before it reads the line, so the
    tracker's last claimed start is the position of the line just yielded. Beam's text readers give no positions,
    and the duplicate-id check needs them to tell identical copies apart (see transforms.dedupe).
    """

    def read_records(self, file_name, range_tracker):
        for line in super().read_records(file_name, range_tracker):
            yield file_name, range_tracker.last_record_start, line


class _RecordsOnly(beam.PTransform):
    """PBegin -> the records of a ReadCorpus, its failures left out."""

    def __init__(self, read: ReadCorpus):
        super().__init__()
        self._read = read

    def expand(self, pbegin):
        return (pbegin | "Read" >> self._read)[RECORDS_TAG]


def raw_record(source: str, position: int, input_format: str) -> str:
    """The record at `position` of `source` (Record.position) as its dead letter shows it: the line as text,
    undecodable bytes as backslash escapes, a TFRecord as base64.

    A plain text file seeks to the byte offset; a compressed one or a TFRecord file is read up to the record.

    Raises:
        ValueError: when the file no longer holds a record there.
    """
    if input_format == "tfrecord":
        size = None if framing.is_compressed(source) else FileSystems.match([source])[0].metadata_list[0].size_in_bytes
        with framing.open_file(source) as handle:
            item = next(itertools.islice(framing.read_tfrecords(handle, source, size), position, None), None)
        if isinstance(item, bytes):
            return base64.b64encode(item).decode("ascii")
    else:
        with framing.open_file(source) as handle:
            if framing.is_compressed(source):
                item = next(itertools.islice(framing.read_lines(handle, source), position, None), None)
            else:
                handle.seek(position)
                item = next(framing.read_lines(handle, source), None)
        if isinstance(item, bytes):
            return item.decode("utf-8", errors="backslashreplace")
    raise ValueError(f"{source} holds no record at {position} any more")


def read_file_records(
    path: str,
    input_format: str,
    id_field: str = "id",
    text_field: str = "text",
    pair_fields: tuple[str, str] | None = None,
    keep_fields: tuple[Column, ...] = (),
) -> typing.Iterator[Record | Failure]:
    """Reads one file into `Record`s and `Failure`s without Beam, exactly as `ReadCorpus` reads it.

    The same readers and parser run in this process, so every record gets the id the pipeline gives it (a
    derived "sha256:" id included). For tools that look at a corpus beside an output, not for large reads.

    Args:
        path: One file, local or `gs://`; compressed files are decompressed by their suffix.
        input_format: One of `FORMATS`; see `infer_format`.
        id_field: As in `ReadCorpus`.
        text_field: As in `ReadCorpus`.
        pair_fields: As in `ReadCorpus`.
        keep_fields: As in `ReadCorpus`.

    Yields:
        One `Record` or `Failure` per line or TFRecord record, in file order, and a `Failure` for the unread
        rest of a file that breaks off.

    Raises:
        ValueError: As `ReadCorpus` does, for an unknown format or bad pair fields.
    """
    # Built only for its checks of the arguments, so they fail here as they would in the pipeline.
    checked = ReadCorpus([path], input_format, id_field, text_field, pair_fields, keep_fields)
    parse = _ParseRecordsFn(input_format, id_field, text_field, checked._pair_fields, checked._keep_fields)
    parse.setup()
    with framing.open_file(path) as handle:
        if input_format == "tfrecord":
            items = framing.read_tfrecords(handle, path)
            kind = "tfrecord"
        else:
            items = framing.read_lines(handle, path)
            kind = "text"
            if input_format in _CSV_DIALECTS:
                # The header, which Beam's reader skips; a stream broken inside it is still reported.
                header = next(items, None)
                if isinstance(header, framing.Damage):
                    items = iter([header])
        for index, item in enumerate(items, start=int(input_format in _CSV_DIALECTS)):
            if isinstance(item, framing.Damage):
                element = _failure(path, _Rejected(item.reason, item.detail), item.data, kind)
            else:
                element = (path, index, item)
            for output in parse.process(element):
                # Outside a pipeline the Beam counters the parser bumps count nothing.
                yield output.value if isinstance(output, beam.pvalue.TaggedOutput) else output


def _compressions(patterns: list[str]) -> set[bool]:
    """Whether the files the patterns match now are compressed: {False}, {True}, or both (or nothing matched)."""
    try:
        paths = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    except BeamIOError:
        paths = []
    kinds = {framing.is_compressed(path) for path in paths}
    return kinds or {False, True}


def _by_compression(metadata, _partitions: int) -> int:
    """Partitions matched files: 0 for plain ones, 1 for compressed ones."""
    return int(framing.is_compressed(metadata.path))


class _ReadTFRecordsFn(beam.DoFn):
    """Reads the TFRecord files it is given into `(path, index, record)`, and damaged records into Failures."""

    def process(self, metadata):
        path = metadata.path
        # As Beam's file readers do, so Dataflow's lineage still lists the inputs.
        FileSystems.report_source_lineage(path)
        size = None if framing.is_compressed(path) else metadata.size_in_bytes
        with framing.open_file(path) as handle:
            for index, item in enumerate(framing.read_tfrecords(handle, path, size)):
                if isinstance(item, framing.Damage):
                    yield _failure(path, _Rejected(item.reason, item.detail), item.data, "tfrecord")
                else:
                    yield path, index, item


class _ReadCompressedLinesFn(beam.DoFn):
    """Reads the compressed text files it is given into `(path, index, line)`, and a broken stream into a Failure."""

    def __init__(self, skip_header: bool):
        self._skip_header = skip_header

    def process(self, metadata):
        path = metadata.path
        FileSystems.report_source_lineage(path)
        with framing.open_file(path) as handle:
            lines = framing.read_lines(handle, path)
            if self._skip_header:
                # The header is read again by _ParseRecordsFn; a stream broken inside it still reports.
                header = next(lines, None)
                if isinstance(header, framing.Damage):
                    lines = iter([header])
            for index, item in enumerate(lines, start=int(self._skip_header)):
                if isinstance(item, framing.Damage):
                    yield _failure(path, _Rejected(item.reason, item.detail), item.data, "text")
                else:
                    yield path, index, item


class _Rejected(Exception):
    """A record that cannot be read, with its failure reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


class _Uncounted:
    """A counter that counts nothing, for a second read of the same input."""

    def __init__(self, _name: str):
        pass

    def inc(self, n: int = 1) -> None:
        pass


class _ParseRecordsFn(beam.DoFn):
    """Parses `(file name, position, raw line or TFRecord)` into Records, and the rest into tagged Failures.

    The readers' own Failures (a file that breaks off, a TFRecord that fails its CRC) pass through, counted.
    """

    def __init__(
        self, input_format: str, id_field: str, text_field: str, pair_fields: tuple[str, str] | None,
        keep_fields: tuple[Column, ...] = (),
        counted: bool = True,
        limits: SinkLimits = _NO_LIMITS,
    ):
        self._input_format = input_format
        self._limits = limits
        self._id_field = id_field
        self._text_fields = pair_fields or (text_field,)
        self._keep_fields = tuple(keep_fields)
        count = counter if counted else _Uncounted
        self._records_read = count(RECORDS_READ)
        self._mismatches = count(KEPT_FIELD_MISMATCH)
        self._failed = {
            reason: count(FAILED_PREFIX + reason)
            for reason in FAILURE_REASONS
        }

    def setup(self):
        self._headers = {}

    def process(self, element):
        if isinstance(element, Failure):
            # A file the readers could not read to its end (or a TFRecord they could not frame).
            self._failed[element.reason].inc()
            yield beam.pvalue.TaggedOutput(FAILED_TAG, element)
            return
        source, position, raw = element
        try:
            record_id, texts, fields = self._parse(source, raw)
            self._check_encodable(record_id, texts)
            digest = content_hash(texts)
            record_id = record_id or derived_id(digest)
            kept = self._kept(fields)
            refusal = self._limits.refusal(record_id, kept)
            if refusal:
                raise _Rejected(UNSTORABLE_REASON, refusal)
        except _Rejected as rejected:
            self._failed[rejected.reason].inc()
            yield beam.pvalue.TaggedOutput(FAILED_TAG, _failure(source, rejected, raw, self._input_format))
            return
        self._records_read.inc()
        yield Record(id=record_id, texts=texts, content_hash=digest, source=source, fields=kept, position=position)

    def _kept(self, fields) -> tuple[tuple[str, object], ...]:
        """The kept fields' values, typed; None for a missing field or one of another type (counted)."""
        kept = []
        for column in self._keep_fields:
            value = fields.get(column.name)
            if self._input_format == "tfrecord":
                value = example_field_value(value)
            try:
                value = typed_value(value, column.type)
            except ValueError:
                self._mismatches.inc()
                value = None
            kept.append((column.name, value))
        return tuple(kept)

    def _check_encodable(self, record_id: str | None, texts: tuple[str, ...]) -> None:
        """Rejects a record with a string that UTF-8 cannot encode, which the hash and the writers need."""
        # JSON escapes can spell lone surrogates ("\ud800"); decoded UTF-8 bytes never hold one.
        for name, text in zip(self._text_fields, texts, strict=True):
            _check_encodable(text, f"field {name!r}")
        if record_id is not None:
            _check_encodable(record_id, f"id field {self._id_field!r}")

    def _parse(self, source: str, raw: bytes) -> tuple[str | None, tuple[str, ...], dict]:
        """Returns the id (None when absent), texts and fields of one raw record, or raises _Rejected."""
        if self._input_format == "tfrecord":
            return self._parse_example(raw)
        line = _decode(raw, "line")
        if not line.strip():
            raise _Rejected("empty_text", "blank line")
        if self._input_format == "text":
            return None, (line,), {}
        if self._input_format == "jsonl":
            fields = _parse_json_object(line)
        else:
            fields = self._parse_row(source, line)
        texts = tuple(_text_value(fields, name) for name in self._text_fields)
        return _id_value(fields, self._id_field), texts, fields

    def _parse_row(self, source: str, line: str) -> dict[str, str]:
        """Returns one CSV/TSV row as a dict keyed by its file's header."""
        header = self._header(source)
        try:
            values = next(csv.reader([line], **_CSV_DIALECTS[self._input_format]))
        except csv.Error as err:
            raise _Rejected(
                "csv_field_count", f"malformed quoting ({err}); quoted fields cannot span lines"
            ) from err
        if len(values) != len(header):
            raise _Rejected(
                "csv_field_count", f"{len(values)} fields where the header of {source} has {len(header)}"
            )
        return dict(zip(header, values, strict=True))

    def _header(self, source: str) -> list[str]:
        """Returns the header of a CSV/TSV file, read once per file and worker."""
        if source not in self._headers:
            # Beam's CompressedFile would raise on a corrupt stream; a broken stream is reported by the reader.
            with framing.open_file(source) as handle:
                first_line = next(framing.read_lines(handle, source), b"")
            if isinstance(first_line, framing.Damage):
                first_line = first_line.data
            try:
                header_line = first_line.decode("utf-8-sig")
            except UnicodeDecodeError as err:
                self._headers[source] = _Rejected("undecodable_bytes", f"the header of {source}: {err}")
            else:
                dialect = _CSV_DIALECTS[self._input_format]
                self._headers[source] = next(csv.reader([header_line], **dialect), [])
        header = self._headers[source]
        if isinstance(header, _Rejected):
            raise header
        return header

    def _parse_example(self, raw: bytes) -> tuple[str | None, tuple[str, ...], dict]:
        """Returns the id, texts and features of one serialised tf.train.Example."""
        try:
            features = parse_example(raw)
        except ValueError as err:
            raise _Rejected("not_a_tf_example", str(err)) from err
        texts = tuple(_example_text(features, name) for name in self._text_fields)
        return _example_id(features, self._id_field), texts, features


def _decode(raw: bytes, what: str) -> str:
    """Decodes UTF-8 (dropping a byte order mark), or raises _Rejected."""
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise _Rejected("undecodable_bytes", f"{what} is not valid UTF-8: {err}") from err


def _parse_json_object(line: str) -> dict:
    """Parses one JSON Lines line that must hold an object."""
    try:
        value = json.loads(line)
    except ValueError as err:
        raise _Rejected("invalid_json", str(err)) from err
    except RecursionError as err:
        # json's parser recurses once per nesting level: a line of 100,000 "[" exhausts the stack.
        raise _Rejected("invalid_json", f"nested too deeply to parse ({err})") from err
    if not isinstance(value, dict):
        raise _Rejected("invalid_json", f"expected a JSON object, got {_type_name(value)}")
    return value


def _check_encodable(value: str, what: str) -> None:
    """Rejects a string that UTF-8 cannot encode: one holding a lone surrogate."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        # The detail names the code point rather than quoting it: the dead-letter file is UTF-8 too.
        raise _Rejected(
            "invalid_unicode",
            f"{what} holds a lone surrogate U+{ord(value[err.start]):04X} at character {err.start}, "
            "which is not Unicode text",
        ) from err


def _text_value(fields: dict, name: str) -> str:
    """Returns a non-blank string field of a JSON object or CSV row."""
    value = fields.get(name)
    if value is None:
        raise _Rejected("missing_field", f"field {name!r} is {'null' if name in fields else 'absent'}")
    if not isinstance(value, str):
        raise _Rejected("not_a_string", f"field {name!r} is {_type_name(value)}, not a string")
    if not value.strip():
        raise _Rejected("empty_text", f"field {name!r} is empty")
    return value


def _id_value(fields: dict, name: str) -> str | None:
    """Returns a string or integer id as a string, or None when it is absent, null or empty."""
    value = fields.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is not None and not isinstance(value, str):
        raise _Rejected("not_a_string", f"id field {name!r} is {_type_name(value)}, not a string or integer")
    return value if value and value.strip() else None


def _example_text(features, name: str) -> str:
    """Returns the one UTF-8 value of a bytes_list feature."""
    if name not in features:
        raise _Rejected("missing_field", f"feature {name!r} is absent")
    values = features[name]
    kind = value_kind(values)
    if kind is None:
        raise _Rejected("missing_field", f"feature {name!r} has no value list")
    if kind != "bytes_list":
        raise _Rejected("not_a_string", f"feature {name!r} is a {kind}, not a bytes_list")
    if not len(values):
        raise _Rejected("missing_field", f"feature {name!r} has no values")
    if len(values) > 1:
        raise _Rejected("not_a_string", f"feature {name!r} has {len(values)} values, not exactly one")
    text = _decode(values[0], f"feature {name!r}")
    if not text.strip():
        raise _Rejected("empty_text", f"feature {name!r} is empty")
    return text


def example_field_value(values):
    """A parsed Example feature as a plain value: None when absent, its one value, or a list of another count;
    bytes as UTF-8 text (undecodable bytes as backslash escapes)."""
    if values is None:
        return None
    items = [item.decode("utf-8", errors="backslashreplace") if isinstance(item, bytes) else item.item()
             for item in values]
    return items[0] if len(items) == 1 else items


def _example_id(features, name: str) -> str | None:
    """Returns the one bytes or int64 value of the id feature as a string, or None when absent or empty."""
    values = features.get(name)
    kind = value_kind(values)
    if kind is None or not len(values):
        return None
    if kind == "float_list" or len(values) > 1:
        raise _Rejected(
            "not_a_string", f"id feature {name!r} is a {kind} of {len(values)}, not one bytes or int64 value"
        )
    if kind == "int64_list":
        return str(values[0])
    record_id = _decode(values[0], f"id feature {name!r}")
    return record_id if record_id.strip() else None


def _failure(source: str, rejected: _Rejected, raw: bytes, input_format: str) -> Failure:
    """Builds the dead-letter entry of a raw record (TFRecords as base64)."""
    if input_format == "tfrecord":
        record = base64.b64encode(raw).decode("ascii")
    else:
        record = raw.decode("utf-8", errors="backslashreplace")
    return make_failure(source, rejected.reason, rejected.detail, record)


def _type_name(value) -> str:
    """Names a JSON value's type the way JSON does."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
