"""Shows what an embedding output holds: python -m pipeline.inspect PREFIX [--corpus FILE] [--query TEXT].

PREFIX is a run's TFRecord or Parquet prefix, a Vertex AI update folder, or a PostgreSQL URI with --postgres_table.
"""

from __future__ import annotations

# Imports of runtime, transforms, psycopg and the like sit inside the functions that use them: the command line
# answers --help and usage errors before it pays for them (see pipeline/cli.py).
import argparse
import contextlib
import sys
from typing import NamedTuple

import numpy as np

__all__ = ["load_output", "nearest_neighbours", "nearest_to", "corpus_texts", "parser",
           "main"]

# Texts longer than this are cut when shown, so one long document does not bury the neighbour list.
_MAX_SHOWN_CHARS = 200
_DESCRIPTION = (
    "Prints the record count, the embedding shape, the model fingerprint(s), how many failures sit in the "
    "dead-letter output, and for a few records their nearest neighbours by cosine similarity. With --corpus "
    "(the run's --input, read as the pipeline reads it) each id is shown with its text, cut at "
    f"{_MAX_SHOWN_CHARS} characters."
)
_PAIR_SEPARATOR = " [SEP] "


class _UsageError(ValueError):
    """A mistake in the command line or a path it names: one `error:` line, exit code 2."""


@contextlib.contextmanager
def _usage(flag: str | None = None):
    """Turns a ValueError of the block into a _UsageError, prefixed with the flag it concerns."""
    try:
        yield
    except _UsageError:
        raise
    except ValueError as err:
        raise _UsageError(f"{flag}: {err}" if flag else str(err)) from err


class _Parser(argparse.ArgumentParser):
    """An argument parser whose refusals are one `error:` line, like every other usage error here."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def load_output(source: str, postgres_table: str | None = None):
    """Any output of a run, read through its sink's reader (transforms.sinks): a PostgreSQL connection string
    (with its table), else a Parquet prefix when PREFIX-*.parquet exists, else a Vertex AI update folder when
    SOURCE/embeddings-*.json exists, else a TFRecord prefix. Returns a transforms.sinks.Loaded."""
    from apache_beam.io.filesystems import FileSystems

    from transforms.sinks import parquet, postgres, tfrecord, vertex

    if source.startswith(("postgresql://", "postgres://")) or (postgres_table and "=" in source):
        if not postgres_table:
            raise ValueError("a PostgreSQL URI needs --postgres_table, the table the run wrote.")
        return postgres.load(source, postgres_table)
    if FileSystems.match([f"{source}-*{parquet.PARQUET_SUFFIX}"])[0].metadata_list:
        return parquet.load(source)
    if FileSystems.match([f"{source.rstrip('/')}/{vertex.DATAPOINTS_NAME}-*.json"])[0].metadata_list:
        return vertex.load(source)
    return tfrecord.load(source)


class _Place(NamedTuple):
    """Where a chunk (--chunking) lies: its document and its characters there; its text when the run kept it."""

    doc_id: str
    char_start: int
    char_end: int
    text: str | None


def _chunk_places(prefix: str) -> dict[str, _Place]:
    """{chunk id: _Place} of a chunked run's output (a second, light pass over its files)."""
    from apache_beam.io.filesystems import FileSystems

    from transforms import framing
    from transforms.examples import parse_example
    from transforms.write import TFRECORD_SUFFIX

    places = {}
    for metadata in FileSystems.match([f"{prefix}-*{TFRECORD_SUFFIX}"])[0].metadata_list:
        with framing.open_file(metadata.path) as handle:
            for item in framing.read_tfrecords(handle, metadata.path):
                features = parse_example(item)
                if "doc_id" not in features:
                    return {}
                text = features["chunk_text"][0].decode() if "chunk_text" in features else None
                places[features["id"][0].decode()] = _Place(features["doc_id"][0].decode(),
                                                            int(features["char_start"][0]),
                                                            int(features["char_end"][0]), text)
    return places


def _embed_query(args, dimension: int) -> np.ndarray:
    """The query's vector, made as the run made its records' (runtime.embed_texts), with the query prompt."""
    import runtime

    if not args.model_dir:
        raise _UsageError("--query needs --model_dir, the model the run embedded with.")
    encoder = args.model_dir.rstrip("/") + "/encoder"
    name = args.query_prompt_name
    if name is None and "query" in runtime.model_defaults(encoder).get("prompts", {}):
        name = "query"
    vector = runtime.embed_texts(args.model_dir, [args.query], prompt_name=name)[0]
    if vector.shape[0] != dimension:
        raise _UsageError(f"--model_dir {args.model_dir} makes vectors of dimension {vector.shape[0]}; the output "
                          f"holds {dimension}: pass the model the run used.")
    return vector


def nearest_to(vectors: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The k rows of `vectors` nearest to `query` by cosine similarity, best first: (row, similarity)."""
    norms = np.linalg.norm(vectors, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
    similarities = vectors @ query / np.maximum(norms, 1e-12)
    order = np.argsort(-similarities, kind="stable")[:k]
    return [(int(i), float(similarities[i])) for i in order]


def nearest_neighbours(vectors: np.ndarray, index: int, k: int) -> list[tuple[int, float]]:
    """The k rows most cosine-similar to row `index` (itself excluded), best first."""
    norms = np.linalg.norm(vectors, axis=1)
    scores = vectors @ vectors[index] / np.maximum(norms * norms[index], 1e-12)
    scores[index] = -np.inf
    best = np.argsort(-scores)[:k]
    return [(int(i), float(scores[i])) for i in best]


def corpus_texts(
    paths: list[str],
    input_format: str,
    id_field: str = "id",
    text_field: str = "text",
    pair_fields: tuple[str, str] | None = None,
    wanted: set[str] | None = None,
) -> tuple[dict[str, tuple[str, ...]], dict[str, int]]:
    """Reads corpus files as the pipeline does and maps each record's id to its texts.

    Ids are the pipeline's own: the id field, or the "sha256:" id derived from the content when a record has
    none (always so for the `text` format).

    Args:
        paths: The corpus files, local or `gs://`.
        input_format: One of `transforms.read.FORMATS`.
        id_field: As the pipeline's --id_field.
        text_field: As the pipeline's --text_field.
        pair_fields: As the pipeline's --pair_fields, or None.
        wanted: The ids to keep (None keeps all), so a large corpus costs no memory for ids not shown.

    Returns:
        The texts (one, or two in pair mode) by id, the first record of an id winning, and the number of
        records that could not be read, by failure reason.

    Raises:
        ValueError: As `transforms.read.ReadCorpus` does, or when a file cannot be opened.
    """
    from apache_beam.io.filesystem import BeamIOError

    from transforms import read as read_lib
    from transforms.records import Failure

    texts, failures = {}, {}
    for path in paths:
        try:
            for item in read_lib.read_file_records(path, input_format, id_field, text_field, pair_fields):
                if isinstance(item, Failure):
                    failures[item.reason] = failures.get(item.reason, 0) + 1
                elif wanted is None or item.id in wanted:
                    texts.setdefault(item.id, item.texts)
        except (OSError, BeamIOError) as err:
            raise ValueError(f"Cannot read {path}: {err}") from err
    return texts, failures


def _count_failures(prefix: str) -> int:
    from apache_beam.io.filesystems import FileSystems

    total = 0
    for metadata in FileSystems.match([f"{prefix}-*.jsonl"])[0].metadata_list:
        with FileSystems.open(metadata.path) as f:
            total += sum(1 for line in f.read().splitlines() if line.strip())
    return total


def _label(record_id: str, texts: dict[str, tuple[str, ...]], places: dict[str, _Place]) -> str:
    """ "ID: TEXT", or for a chunk "DOC_ID#K (document DOC_ID, characters A-B): PASSAGE"."""
    place = places.get(record_id)
    if place is not None:
        passage = place.text
        if passage is None and place.doc_id in texts:
            passage = texts[place.doc_id][0][place.char_start:place.char_end]
        where = f"{record_id} (document {place.doc_id}, characters {place.char_start}-{place.char_end})"
        return where if passage is None else _shown(where, (passage,))
    if record_id not in texts:
        return record_id
    return _shown(record_id, texts[record_id])


def _shown(name: str, texts: tuple[str, ...]) -> str:
    shown = _PAIR_SEPARATOR.join(texts)
    if len(shown) > _MAX_SHOWN_CHARS:
        shown = shown[:_MAX_SHOWN_CHARS] + "..."
    if "\n" in shown or "\r" in shown:
        # Escaped, so a text with line breaks stays on its one line of the listing.
        shown = shown.encode("unicode_escape").decode("ascii")
    return f"{name}: {shown}"


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value!r}")
    return number


def parser() -> argparse.ArgumentParser:
    """The command line's parser."""
    from transforms.read import FORMATS

    parser = _Parser(prog="python -m pipeline.inspect", description=_DESCRIPTION)
    parser.add_argument("prefix", metavar="PREFIX",
                        help="The --output_tfrecord or --output_parquet prefix of a run, local or gs:// "
                        "(PREFIX-*.parquet is read when there is one, else PREFIX-*.tfrecord), or its "
                        "--output_postgres URI with --postgres_table.")
    parser.add_argument("--postgres_table", default=None,
                        help="The run's --postgres_table, when PREFIX is a PostgreSQL URI. Default: none.")
    parser.add_argument("--failed", metavar="FAILED_PREFIX",
                        help="The run's dead-letter prefix (its --output_failed), whose FAILED_PREFIX-*.jsonl "
                        "lines are counted. Default: PREFIX-failed, the pipeline's own default.")
    parser.add_argument("--corpus", metavar="PATTERNS",
                        help="The run's --input: files or glob patterns, local or gs://, separated by commas "
                        "(compressed files too). Read as the pipeline reads them, so each id, a derived sha256: "
                        "id included, is shown with its text. Default: none, ids only.")
    parser.add_argument("--input_format", choices=FORMATS, default=None,
                        help="The format of --corpus, as the pipeline's --input_format. Default: inferred from "
                        "the file extension (.txt, .jsonl, .csv, .tsv, .tfrecord; .gz and the like ignored).")
    parser.add_argument("--id_field", default="id",
                        help="The field holding each record's id, as the pipeline's --id_field. Default: id.")
    parser.add_argument("--text_field", default="text",
                        help="The field holding the text, as the pipeline's --text_field. Default: text.")
    parser.add_argument("--pair_fields", default=None, metavar="A,B",
                        help="Two fields embedded as a pair, as the pipeline's --pair_fields; shown as "
                        f"'A{_PAIR_SEPARATOR}B'. Replaces --text_field. Default: none, one text per record.")
    parser.add_argument("--samples", type=_positive_int, default=3,
                        help="How many records to show neighbours for, spread over the output. Default: 3.")
    parser.add_argument("-k", type=_positive_int, default=3, help="Neighbours shown per record. Default: 3.")
    parser.add_argument("--query", metavar="TEXT",
                        help="Embed TEXT with --model_dir, as the run embedded its corpus, and show the stored "
                        "records nearest to it (chunks with their document and place) instead of sample "
                        "neighbours. Default: none.")
    parser.add_argument("--top", type=_positive_int, default=5,
                        help="How many records --query shows. Default: 5.")
    parser.add_argument("--model_dir",
                        help="The run's --model_dir, for --query: its pooling, normalisation and length are the "
                        "model's own, as in a run without those flags. Default: none.")
    parser.add_argument("--query_prompt_name", default=None,
                        help="The model's prompt for --query (sentence-transformers' prompt_name). Default: query "
                        "when the model declares it, else the model's default prompt, else none.")
    return parser


def _corpus_plan(args) -> tuple[list[str], str, tuple[str, str] | None]:
    """Checks the corpus flags before the output is read: the files, their format and the pair fields."""
    from pipeline.options import parse_pair_fields, split_patterns
    from transforms import read as read_lib

    with _usage():
        pair_fields = parse_pair_fields(args.pair_fields)
    if args.corpus is None:
        return [], "", pair_fields
    with _usage("--corpus"):
        patterns = split_patterns(args.corpus)
        paths = read_lib.check_inputs_exist(patterns)
        input_format = args.input_format or read_lib.infer_format(patterns)
        # ReadCorpus checks the format and the fields as a run would (no pairs from plain text, say).
        read_lib.ReadCorpus(paths, input_format, args.id_field, args.text_field, pair_fields)
    return paths, input_format, pair_fields


def _inspect(args) -> int:
    paths, input_format, pair_fields = _corpus_plan(args)
    with _usage():
        ids, vectors, models, where = load_output(args.prefix, args.postgres_table)
    failures = _count_failures(args.failed or args.prefix + "-failed") if "://" not in where else 0
    print(f"{len(ids)} embeddings of dimension {vectors.shape[1] if len(ids) else 0} in {where}; "
          f"{failures} records in the dead-letter output; model fingerprint(s): {', '.join(sorted(models))}")
    places = _chunk_places(args.prefix) if any("#" in record_id for record_id in ids) else {}
    if args.query is not None:
        with _usage("--query"):
            found = nearest_to(vectors, _embed_query(args, vectors.shape[1] if len(ids) else 0), args.top)
        shown = [(None, found)]
    else:
        step = max(len(ids) // args.samples, 1)
        shown = [(index, nearest_neighbours(vectors, index, min(args.k, len(ids) - 1)))
                 for index in list(range(0, len(ids), step))[:args.samples]]
    texts = {}
    if paths:
        wanted = {ids[i] for index, neighbours in shown
                  for i in ([] if index is None else [index]) + [n for n, _ in neighbours]}
        wanted = {places[i].doc_id if i in places else i for i in wanted}
        with _usage("--corpus"):
            texts, unread = corpus_texts(paths, input_format, args.id_field, args.text_field, pair_fields, wanted)
        if unread:
            reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(unread.items()))
            print(f"note: {sum(unread.values())} records of --corpus could not be read ({reasons}); "
                  "they have no text here", file=sys.stderr)
        if wanted and not texts:
            print(f"note: none of the ids shown is in --corpus read as {input_format}: check --input_format, "
                  "--id_field, --text_field and --pair_fields against the run's", file=sys.stderr)
    for index, neighbours in shown:
        print(f"\nquery: {args.query}" if index is None else f"\n{_label(ids[index], texts, places)}")
        for neighbour, score in neighbours:
            print(f"  {score:.3f}  {_label(ids[neighbour], texts, places)}")
    return 0


def main(argv=None) -> int:
    """Runs the command line.

    Args:
        argv: The arguments (default: sys.argv[1:]).

    Returns:
        The exit code: 0, or 2 after one `error:` line on stderr for a mistake in the arguments or a path.
    """
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit_:
        # --help (0) or a flag argparse refused (2, its error line printed): returned, as from any mistake.
        return exit_.code
    try:
        return _inspect(args)
    except _UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
