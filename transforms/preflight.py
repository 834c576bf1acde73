"""Looks at the first records of the input before a run starts, so format and field mistakes cost one line.

A run over the wrong --text_field or --input_format would read every record, dead-letter all of them and fail
at the end (transforms.guard); a few records from the first files tell the same in a second.
"""

from __future__ import annotations

import csv
import json

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms import framing

__all__ = ["SAMPLE_RECORDS", "SAMPLE_FILES", "check_sample", "estimate_records", "kept_columns"]

SAMPLE_RECORDS = 20  # Per file.
SAMPLE_FILES = 3  # Per pattern: the first ones by name.
_SHOWN_FIELDS = 12
_DELIMITERS = {"csv": ",", "tsv": "\t"}


def _sample_files(patterns: list[str]) -> list[str]:
    paths = []
    for result in FileSystems.match(list(patterns)):
        paths += sorted(metadata.path for metadata in result.metadata_list)[:SAMPLE_FILES]
    return list(dict.fromkeys(paths))


def _first_records(path: str, count: int, input_format: str) -> list[bytes]:
    """Up to `count` lines (TFRecord payloads for tfrecord) through transforms.framing's readers; a damaged or
    unreadable stream gives what came before (the run dead-letters the rest where it breaks)."""
    reader = framing.read_tfrecords if input_format == "tfrecord" else framing.read_lines
    records = []
    try:
        with framing.open_file(path) as handle:
            for item in reader(handle, path):
                if isinstance(item, framing.Damage) or len(records) == count:
                    break
                records.append(item)
    except (OSError, EOFError, ValueError, framing.StreamError):
        pass
    return records


def _fields_line(fields) -> str:
    names = sorted(fields)
    shown = ", ".join(names[:_SHOWN_FIELDS]) + (", ..." if len(names) > _SHOWN_FIELDS else "")
    return shown or "none"


def _missing(text_fields: tuple[str, ...], found: set) -> list[str]:
    return [field for field in text_fields if field not in found]


def _field_flag(text_fields: tuple[str, ...]) -> str:
    return "--pair_fields" if len(text_fields) == 2 else "--text_field"


def _check_jsonl(path: str, lines: list[bytes], text_fields: tuple[str, ...]) -> None:
    objects = []
    for line in lines:
        try:
            value = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            objects.append(value)
    if not objects:
        raise ValueError(f"--input {path}: none of its first {len(lines)} lines is a JSON object (line 1: "
                         f"{lines[0][:40]!r}); check --input_format (jsonl here) or the file.")
    found = set().union(*objects)
    if not any(all(field in record for field in text_fields) for record in objects):
        raise ValueError(f"{_field_flag(text_fields)} {','.join(text_fields)}: no record among the first "
                         f"{len(objects)} of {path} has {' and '.join(_missing(text_fields, found)) or 'them all'}; "
                         f"its records have the fields {_fields_line(found)}.")


def _check_delimited(path: str, lines: list[bytes], text_fields: tuple[str, ...], input_format: str) -> None:
    header_line = lines[0].decode("utf-8-sig", "replace")
    if header_line.lstrip().startswith(("{", "[")):
        raise ValueError(f"--input_format {input_format}: {path} looks like JSON Lines, not {input_format} (its "
                         "first line starts with a JSON object): pass --input_format jsonl.")
    try:
        header = next(csv.reader([header_line], delimiter=_DELIMITERS[input_format]), [])
    except csv.Error:
        header = []
    missing = _missing(text_fields, set(header))
    if missing:
        raise ValueError(f"{_field_flag(text_fields)} {','.join(text_fields)}: the header of {path} has no column "
                         f"{' or '.join(missing)}; its columns are {_fields_line(header)}. The first line of "
                         f"every {input_format} file must be its header.")


def _check_tfrecord(path: str, records: list[bytes], text_fields: tuple[str, ...]) -> None:
    from transforms.examples import parse_example

    examples = []
    for record in records:
        try:
            examples.append(parse_example(record))
        except ValueError:
            continue
    if not examples:
        raise ValueError(f"--input {path}: none of its first {len(records)} records is a tf.train.Example; "
                         "check --input_format (tfrecord here) or the file.")
    found = set().union(*(set(example) for example in examples))
    if not any(all(example.get(field) is not None for field in text_fields) for example in examples):
        raise ValueError(f"{_field_flag(text_fields)} {','.join(text_fields)}: no Example among the first "
                         f"{len(examples)} of {path} has it; their features are {_fields_line(found)}.")


def check_sample(patterns: list[str], input_format: str, text_fields: tuple[str, ...]) -> None:
    """Reads the first records of the first files of each pattern and refuses a run that cannot work.

    Refused, each with one line naming the flag or file: input files that are all empty; a JSONL file none of
    whose first lines is a JSON object; a CSV/TSV file that is JSON Lines, or whose header lacks the text field;
    a text field that no sampled record has (listing the fields that exist); TFRecords that are not Examples.
    Records that fail one by one are left to the run, which dead-letters them.

    Raises:
        ValueError: naming the flag and the file.
    """
    empty = True
    for path in _sample_files(patterns):
        if input_format == "tfrecord":
            records = _first_records(path, SAMPLE_RECORDS, input_format)
            if records:
                empty = False
                _check_tfrecord(path, records, text_fields)
            continue
        header = 1 if input_format in _DELIMITERS else 0
        lines = [line for line in _first_records(path, SAMPLE_RECORDS + header, input_format) if line.strip()]
        if not lines:
            continue
        empty = False
        if input_format == "jsonl":
            _check_jsonl(path, lines, text_fields)
        elif input_format in _DELIMITERS:
            _check_delimited(path, lines, text_fields, input_format)
    if empty:
        raise ValueError(f"--input {', '.join(patterns)}: the files hold no records (they are empty).")


def estimate_records(patterns: list[str], input_format: str) -> int | None:
    """About how many records the input holds: its bytes over the bytes per record of a sample. Line formats are
    sampled in blocks spread through each sampled file (its first lines may not be typical: a corpus sorted by
    length), TFRecord files by their first records. None for compressed input, whose size says little about its
    records."""
    files = [metadata for result in FileSystems.match(list(patterns)) for metadata in result.metadata_list]
    if not files or any(CompressionTypes.detect_compression_type(m.path) != CompressionTypes.UNCOMPRESSED
                        for m in files):
        return None
    sampled = {m.path: m.size_in_bytes for m in files}
    sampled_bytes = sampled_records = 0
    for path in _sample_files(patterns):
        if input_format == "tfrecord":
            records = _first_records(path, SAMPLE_RECORDS * 5, input_format)
            # Framing per record: length and two CRCs.
            sampled_bytes += sum(len(record) + 16 for record in records)
            sampled_records += len(records)
        else:
            sampled_bytes += sampled[path]
            sampled_records += _estimate_lines(path, sampled[path])
    if not sampled_records or not sampled_bytes:
        return None
    return round(sum(m.size_in_bytes for m in files) * sampled_records / sampled_bytes)


_BLOCK_BYTES, _BLOCKS = 1 << 15, 8


def _estimate_lines(path: str, size: int) -> float:
    """About how many lines a plain file holds: counted in a small file; in a large one, estimated part by part
    from a block read in the middle of each of _BLOCKS equal parts (each part at its own bytes per line)."""
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            if size <= _BLOCK_BYTES * _BLOCKS:
                data = handle.read()
                return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
            lines = 0.0
            for part in range(_BLOCKS):
                handle.seek(size * (2 * part + 1) // (2 * _BLOCKS) - _BLOCK_BYTES // 2)
                data = handle.read(_BLOCK_BYTES)
                lines += size / _BLOCKS * data.count(b"\n") / max(len(data), 1)
            return lines
    except OSError:
        return 0.0


def kept_columns(patterns: list[str], input_format: str, names: tuple[str, ...]) -> tuple:
    """The --keep_fields columns, typed from the first records of the first files (records.infer_field_type).

    CSV and TSV columns are strings. A field no sampled record has is a string column (its values, if any,
    are kept as text).

    Raises:
        ValueError: naming --keep_fields, for a name that is an output column or given twice, or the text format.
    """
    from transforms.records import RESERVED_NAMES, Column, infer_field_type

    if not names:
        return ()
    if input_format == "text":
        raise ValueError("--keep_fields needs named fields; --input_format text has none (use jsonl, csv, tsv or "
                         "tfrecord).")
    clashes = [name for name in names if name in RESERVED_NAMES]
    if clashes:
        raise ValueError(f"--keep_fields {','.join(names)}: {', '.join(clashes)} would clash with an output column "
                         f"of the same name (reserved: {', '.join(sorted(RESERVED_NAMES))}); rename the field in "
                         "the input or leave it out.")
    if len(set(names)) != len(names):
        raise ValueError(f"--keep_fields {','.join(names)} names a field twice.")
    if input_format in _DELIMITERS:
        return tuple(Column(name, "string") for name in names)
    samples = []
    for path in _sample_files(patterns):
        for raw in _first_records(path, SAMPLE_RECORDS, input_format):
            samples += _sample_fields(raw, input_format)
    return tuple(Column(name, infer_field_type(sample.get(name) for sample in samples)) for name in names)


def _sample_fields(raw: bytes, input_format: str) -> list[dict]:
    """The fields of one sampled record as plain values ([] for one that does not parse)."""
    from transforms.examples import parse_example
    from transforms.read import example_field_value

    try:
        if input_format == "tfrecord":
            return [{name: example_field_value(values) for name, values in parse_example(raw).items()}]
        value = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        return []
    return [value] if isinstance(value, dict) else []
