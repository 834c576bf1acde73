"""The pipeline's options, declared once; their help text doubles as the Flex Template's helpText."""

from __future__ import annotations

import argparse
import difflib

from apache_beam.options.pipeline_options import PipelineOptions

# Neither imports TensorFlow: --help stays quick.
from runtime import DEFAULT_POOLING, DEFAULT_SEQ_LENGTH, MAX_SEQ_LENGTH, POOLING_MODES, PRECISIONS
from runtime.chunking import CHUNKING_MODES, DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_TOKENS
from transforms.read import FORMATS

__all__ = ["EmbeddingOptions", "UsageError", "LOCAL_RUNNERS",
           "DEFAULT_ENCODER", "DEFAULT_PREPROCESSOR", "split_patterns",
           "parse_pair_fields", "parse_field_list", "POSTGRES_INDEXES",
           "options_parser", "check_argv", "option_actions"]

# Runners that run in this process, on this machine: only these are waited for, and only they may be handed a
# secret in their options (nothing of the job leaves the machine).
LOCAL_RUNNERS = ("DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "PrismRunner")
DEFAULT_ENCODER = "https://tfhub.dev/jeongukjae/distilbert_en_cased_L-6_H-768_A-12/1"
DEFAULT_PREPROCESSOR = "https://tfhub.dev/jeongukjae/distilbert_en_cased_preprocess/2"


class UsageError(ValueError):
    """A mistake in the command line (a flag, its value or a combination): exit code 2, one line."""


def split_patterns(value: str) -> list[str]:
    """--input "a/*.jsonl, b/*.jsonl" -> ["a/*.jsonl", "b/*.jsonl"]."""
    return [pattern.strip() for pattern in value.split(",") if pattern.strip()]


def parse_pair_fields(value: str | None) -> tuple[str, str] | None:
    """--pair_fields "premise,hypothesis" -> ("premise", "hypothesis"); ValueError naming the flag."""
    if not value:
        return None
    fields = [field.strip() for field in value.split(",")]
    if len(fields) != 2 or not all(fields) or fields[0] == fields[1]:
        raise ValueError(f"--pair_fields {value!r} must name two different fields, like premise,hypothesis.")
    return fields[0], fields[1]


def parse_field_list(value: str | None, flag: str) -> tuple[str, ...]:
    """"lang, year" -> ("lang", "year"); ValueError naming `flag` for an empty name or a name given twice."""
    if not value:
        return ()
    names = tuple(name.strip() for name in value.split(","))
    if not all(names):
        raise ValueError(f"{flag} {value!r} holds an empty field name: separate names with single commas.")
    if len(set(names)) != len(names):
        raise ValueError(f"{flag} {value!r} names a field twice.")
    return names


POSTGRES_INDEXES = ("hnsw", "ivfflat")


def _bounded(kind, low, high=None):
    """An argparse type: a number of `kind` between `low` and `high` (inclusive), with one message for all."""
    bounds = f"at least {low}" if high is None else f"between {low} and {high}"
    noun = "an integer" if kind is int else "a number"

    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or number < low or (high is not None and number > high):
            raise argparse.ArgumentTypeError(f"must be {noun} {bounds}, not {value!r}")
        return number

    parse.__name__ = f"{kind.__name__}_{low}_{high}"
    return parse


_positive_int = _bounded(int, 1)
_positive_int.__name__ = "_positive_int"
_seq_length = _bounded(int, 2, MAX_SEQ_LENGTH)
_seq_length.__name__ = "_positive_int"
_fraction = _bounded(float, 0.0, 1.0)
_fraction.__name__ = "_fraction"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Ends each option's help with its default, unless the help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "Default" not in text:
            text += f" Default: {action.default}."
        return text.replace("%", "%%")


class _StrictParser(argparse.ArgumentParser):
    """Raises UsageError instead of printing usage and exiting: the caller prints one line."""

    def error(self, message):
        raise UsageError(message[:1].upper() + message[1:] + ".")


def options_parser(prog: str = "python -m pipeline.run", description: str | None = None,
                   beam_options: bool = True, epilog: str | None = None,
                   usage: str | None = None) -> argparse.ArgumentParser:
    """The parser of the pipeline's command line: EmbeddingOptions and, with `beam_options`, every Beam option.

    The one way to build it, for the pipeline's --help and checks, the Flex Template launcher and the template
    metadata generator. Its errors raise UsageError.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    parser = _StrictParser(prog=prog, description=description, epilog=epilog, allow_abbrev=False,
                           formatter_class=_HelpFormatter, usage=usage)
    EmbeddingOptions._add_argparse_args(parser)
    if beam_options:
        # As PipelineOptions.get_all_options does: every options class Beam knows, once.
        classes = {str(cls): cls for cls in PipelineOptions.__subclasses__() if cls is not EmbeddingOptions}
        beam_group = parser.add_argument_group("Beam and Dataflow options (see Beam's documentation)")
        for cls in classes.values():
            cls._add_argparse_args(_GroupAdapter(parser, beam_group))
    return parser


def option_actions(parser: argparse.ArgumentParser | None = None) -> list[argparse.Action]:
    """The options a parser declares, --help left out (default: the pipeline's own, without Beam's): the one
    place that reads argparse's list of them, which has no public accessor."""
    parser = parser or options_parser(beam_options=False)
    return [action for action in parser._actions if action.option_strings and action.dest != "help"]


class _GroupAdapter:
    """Lets Beam's options classes add their arguments to one argument group; tolerates repeats."""

    def __init__(self, parser, group):
        self._parser, self._group = parser, group

    def add_argument_group(self, *args, **kwargs):
        return self

    def add_argument(self, *args, **kwargs):
        known = {option for action in self._parser._actions for option in action.option_strings}
        if any(arg in known for arg in args):
            return None
        kwargs.pop("help", None)
        return self._group.add_argument(*args, help=argparse.SUPPRESS, **kwargs)

    def __getattr__(self, name):
        return getattr(self._parser, name)


def check_argv(argv: list[str]) -> None:
    """Refuses what Beam would silently drop or misread: unknown flags, bad values, single-dash flags.

    Raises:
        UsageError: naming the flag, with the closest known flag when there is one.
    """
    parser = options_parser()
    _, unknown = parser.parse_known_args(argv)
    known = [option for action in option_actions(parser) for option in action.option_strings
             if option.startswith("--")]
    for arg in unknown:
        if not arg.startswith("-"):
            raise UsageError(f"Unexpected argument {arg!r}: every setting is a --flag (value); "
                             "see python -m pipeline.run --help.")
        name = arg.split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f": did you mean {close[0]}?" if close else ": see python -m pipeline.run --help."
        raise UsageError(f"Unknown flag {name}{hint}")


class EmbeddingOptions(PipelineOptions):
    """Options of `python -m pipeline.run`; Beam's own options (--runner, --project, ...) sit beside them."""

    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("Embedding pipeline")
        group.add_argument(
            "--input", help="Required. Corpus file pattern(s), local or gs://, comma-separated; globs and sharded "
            "files welcome, e.g. gs://bucket/corpus/part-*.jsonl.")
        group.add_argument(
            "--input_format", choices=FORMATS, default=None,
            help="Corpus format: text (one text per line), jsonl, csv, tsv (header line first) or tfrecord "
            "(tf.train.Example). Default: inferred from the file extension.")
        group.add_argument("--id_field", default="id",
                           help="Field holding each record's id (jsonl/csv/tsv/tfrecord). Records without one "
                           "get a stable id derived from their content: sha256: and 16 hex digits.")
        group.add_argument("--text_field", default="text", help="Field holding the text to embed.")
        group.add_argument(
            "--pair_fields", default=None,
            help="Two comma-separated fields embedded as one input, [CLS] A [SEP] B [SEP] with type ids "
            "0/1 and round-robin truncation (NLI-style corpora). Replaces --text_field.")
        group.add_argument("--model_dir", default=None,
                           help="Directory written by model.export; shorthand for --encoder DIR/encoder "
                           "--preprocessor DIR/preprocessor. Local or gs://. A SavedModel is a program: load "
                           "only models you trust.")
        group.add_argument("--encoder", default=None,
                           help="Encoder SavedModel: local directory, gs:// path or TF Hub URL. Default: "
                           f"{DEFAULT_ENCODER}.")
        group.add_argument("--preprocessor", default=None,
                           help="Preprocessor SavedModel (tokenize, bert_pack_inputs): local directory, gs:// "
                           f"path or TF Hub URL. Default: {DEFAULT_PREPROCESSOR}.")
        group.add_argument("--seq_length", type=_seq_length, default=None,
                           help="Longest input in tokens, [CLS] and [SEP] included; longer inputs are "
                           f"truncated (and counted). Between 2 and {MAX_SEQ_LENGTH}, and at most the model's "
                           "maximum. Default: the max_seq_length the model was exported with from a "
                           f"sentence-transformers checkpoint, else {DEFAULT_SEQ_LENGTH}; with --chunking windows, "
                           f"--chunk_tokens + 2; with --chunking late, {MAX_SEQ_LENGTH}.")
        group.add_argument("--pooling", choices=POOLING_MODES, default=None,
                           help="pooled: the encoder's pooled_output (DistilBERT: the [CLS] vector); cls: the "
                           "[CLS] token of sequence_output; mean: average over real tokens. pooled and cls "
                           "are faster with encoders from model.export (their last layer computes [CLS] alone; "
                           "see BENCHMARKS.md) unless --output_sequence asks for every token. Default: the "
                           "pooling the model was exported with (model.export reads a sentence-transformers "
                           f"checkpoint's own, e.g. mean for all-MiniLM-L6-v2), else {DEFAULT_POOLING}.")
        group.add_argument("--normalize", action="store_true", default=None,
                           help="L2-normalise every embedding (cosine similarity becomes a dot product). "
                           "Default: as the model was exported (a sentence-transformers checkpoint with a "
                           "Normalize module), else off.")
        group.add_argument("--prompt_name", default=None,
                           help="Prepend the model's prompt of this name to every text before tokenizing, as "
                           "sentence-transformers' encode(prompt_name=...) does (E5's passage, BGE's query ...): "
                           "model.export records a checkpoint's prompts. Default: the model's default_prompt_name, "
                           "if it declares one, else no prompt. With --chunking windows the prompt's wordpieces go "
                           "before every chunk's, within --seq_length.")
        group.add_argument("--prompt", default=None,
                           help="Prepend this text to every text before tokenizing instead (sentence-transformers' "
                           "prompt=...). Default: see --prompt_name.")
        group.add_argument("--batch_size", type=_positive_int, default=512,
                           help="Texts handed to the model at once (fewer only at the end of a bundle). A batch "
                           "is sorted by length and cut into sub-batches of similar lengths: the larger the "
                           "batch, the less padding (see BENCHMARKS.md).")
        group.add_argument("--token_budget", type=_positive_int, default=4096,
                           help="Most padded tokens encoded at once; a batch is sorted by length and cut "
                           "into sub-batches, each padded only to its own longest text.")
        group.add_argument("--precision", choices=PRECISIONS, default="fp32",
                           help="fp32, or bf16 to run the encoder's matrix multiplications in bfloat16 on CPU "
                           "workers with AVX512_BF16 or AMX: several times faster with AMX (see BENCHMARKS.md), "
                           "cosine to fp32 above 0.999 (measured on a random-weight DistilBERT; check your "
                           "model). Fastest for encoders exported by model.export; works with any SavedModel. "
                           "Changes the model fingerprint.")
        group.add_argument(
            "--chunking", choices=CHUNKING_MODES, default="none",
            help="none: one embedding per record, cut to --seq_length (default). windows: cut each text into "
            "chunks of whole words (--chunk_tokens, --chunk_overlap) covering all of it, each embedded alone as "
            "[CLS] chunk [SEP]; a chunk's vector is what the model gives for its text. late: late chunking, each "
            "chunk's vector the mean of its own token vectors encoded in windows of up to --seq_length tokens "
            "of the whole document, so every chunk sees its context (needs --pooling mean). One output record "
            "per chunk, id DOC_ID#K, with doc_id, chunk_index, chunk_count, char_start and char_end. Single texts "
            "only (not --pair_fields). See the README's \"Long documents\".")
        group.add_argument("--chunk_tokens", type=_positive_int, default=None,
                           help=f"With --chunking: wordpieces per chunk, [CLS] and [SEP] not counted. Default: "
                           f"{DEFAULT_CHUNK_TOKENS}, or the model's longest input less 2 when that is less (for "
                           "windows also a sentence-transformers model's own: 254 for all-MiniLM-L6-v2).")
        group.add_argument("--chunk_overlap", type=_bounded(int, 0), default=None,
                           help="With --chunking: wordpieces consecutive chunks share, as whole words (the "
                           f"longest tail of words within it); less than --chunk_tokens. Default: "
                           f"{DEFAULT_CHUNK_OVERLAP}, or an eighth of --chunk_tokens when that is less.")
        group.add_argument("--output_chunk_text", action="store_true", default=False,
                           help="With --chunking: also write each chunk's text (chunk_text).")
        group.add_argument("--large_model", action="store_true", default=False,
                           help="Hold one copy of the models per machine, shared by all worker processes.")
        group.add_argument("--model_copies", type=_positive_int, default=None,
                           help="Hold exactly this many model copies per machine (implies sharing).")
        group.add_argument("--output_tfrecord", default=None,
                           help="Output prefix, local or gs://: writes PREFIX-SSSSS-of-NNNNN.tfrecord files of "
                           "tf.train.Example with id, embedding, model, content_hash and the --keep_fields. Give "
                           "at least one output: this, --output_bigquery, --output_parquet, --output_vertex or "
                           "--output_postgres (an incremental run needs this one).")
        group.add_argument("--output_sequence", action="store_true", default=False,
                           help="Also write each record's unpadded token vectors (sequence, sequence_length).")
        group.add_argument("--output_failed", default=None,
                           help="Dead-letter prefix: records that could not be embedded, as JSON lines with "
                           "source, reason, detail and the raw record. Default: OUTPUT_TFRECORD-failed; "
                           "required when there is no --output_tfrecord (BigQuery, Parquet, Vertex AI or PostgreSQL "
                           "alone).")
        group.add_argument("--max_failed_fraction", type=_fraction, default=0.1,
                           help="Fail the run when more than this fraction of the input records could not be "
                           "embedded (between 0 and 1). A failed run writes its dead letters but no manifest, "
                           "runs no BigQuery MERGE and leaves earlier runs and tables as they were. A run that "
                           "reads records but embeds none always fails.")
        group.add_argument(
            "--output_bigquery", default=None,
            help="BigQuery table PROJECT:DATASET.TABLE (or PROJECT.DATASET.TABLE) to append the embeddings to, "
            "one row per record: id STRING, embedding FLOAT64 REPEATED, model STRING, content_hash STRING, "
            "embedded_at TIMESTAMP, run_id STRING (--run_id). The dataset must exist; the table is created "
            "when missing. An existing table must have these columns with these types (NULLABLE is fine); "
            "its other columns must not be REQUIRED. Checked before the job starts. With a BigQuery "
            "--previous_output the run keeps this table current instead of appending: one row per id, "
            "exactly the corpus's complete set (see docs/incremental.md).")
        group.add_argument(
            "--bigquery_method", choices=("file_loads", "streaming"), default="file_loads",
            help="How --output_bigquery is written: file_loads (default) stages files under --temp_location, "
            "which must then be gs://, and loads them with BigQuery load jobs (free, atomic per job); "
            "streaming uses streaming inserts (billed per byte, rows visible at once), and rows BigQuery "
            "refuses go to --output_failed.")
        group.add_argument("--run_id", default=None,
                           help="Names this run: replaces {run_id} in --output_tfrecord and --output_failed, "
                           "e.g. gs://bucket/emb/run={run_id}/part. Default: the launch time in UTC, "
                           "YYYY-MM-DDTHH-MM-SS. Pass an earlier run's id to repeat that run in place.")
        group.add_argument("--max_deleted_fraction", type=_fraction, default=0.5,
                           help="With --previous_output: refuse the run, before it writes a manifest or MERGEs "
                           "anything, when records gone from the corpus are more than this fraction of the "
                           "earlier set (a wrong --input or --text_field looks like a deleted corpus). Pass 1 to "
                           "allow any deletion. See docs/incremental.md.")
        group.add_argument("--previous_output", default=None,
                           help="An earlier run's embeddings, to update incrementally: only new and changed records "
                           "are embedded and the rest is carried forward, so the output is again the complete set. "
                           "Either an earlier run's --output_tfrecord prefix, where {latest} picks the newest "
                           "complete run before this one, e.g. gs://bucket/emb/run={latest}/part; or a BigQuery "
                           "table PROJECT:DATASET.TABLE, usually the --output_bigquery table itself, which the run "
                           "then keeps current. See docs/incremental.md.")
        _add_sink_arguments(parser)


def _add_sink_arguments(parser) -> None:
    """Kept fields and the sinks beyond TFRecord and BigQuery (Parquet, Vertex AI Vector Search, PostgreSQL)."""
    group = parser.add_argument_group("Metadata and vector-store sinks")
    group.add_argument("--keep_fields", default=None,
                       help="Comma-separated fields of each input record (jsonl, csv, tsv, tfrecord) carried to the "
                       "sinks beside the embedding, e.g. lang,source,date: TFRecord features, BigQuery, Parquet and "
                       "PostgreSQL columns typed from the first records (string, integer, float, boolean, lists of "
                       "those; anything else as JSON text; csv/tsv values are strings). A field a record lacks is "
                       "null. Chunks carry their document's fields.")
    group.add_argument("--output_parquet", default=None,
                       help="Output prefix, local or gs://: writes PREFIX-SSSSS-of-NNNNN.parquet files with id, "
                       "embedding (fixed-size list of float32), model, content_hash and the --keep_fields; "
                       "readable by pandas, DuckDB and BigQuery external tables. With "
                       "--previous_output it holds the complete set. {run_id} is replaced as in --output_tfrecord.")
    group.add_argument("--output_vertex", default=None,
                       help="Output folder, local or gs://: a Vertex AI Vector Search batch update, JSON lines "
                       "(id, embedding, restricts, numeric_restricts, crowding_tag) under FOLDER/ and, with "
                       "--previous_output, the ids the run removes under FOLDER/delete/; with --previous_output "
                       "only new and changed vectors are written. {run_id} is replaced as in --output_tfrecord.")
    group.add_argument("--vertex_restricts", default=None,
                       help="Comma-separated --keep_fields written as Vertex restricts: each a namespace whose "
                       "allow list is the field's value (or values).")
    group.add_argument("--vertex_numeric_restricts", default=None,
                       help="Comma-separated numeric --keep_fields written as Vertex numeric_restricts "
                       "(value_int for integers, value_double for floats).")
    group.add_argument("--vertex_crowding_tag", default=None,
                       help="A --keep_fields field written as each vector's Vertex crowding_tag.")
    group.add_argument("--output_postgres", default=None,
                       help="PostgreSQL URI (postgresql://USER@HOST:PORT/DB; AlloyDB and Cloud SQL for PostgreSQL "
                       "alike) of a database with the pgvector extension available: rows are upserted by id into "
                       "--postgres_table. The password comes from the URI (local runs only: a job sent to Dataflow "
                       "would carry it) or libpq's own PGPASSWORD or PGPASSFILE, and is never logged. Records whose "
                       "id or kept text PostgreSQL cannot hold (a NUL, an id over 2,000 bytes) are dead letters.")
    group.add_argument("--postgres_table", default=None,
                       help="Table for --output_postgres, optionally SCHEMA.TABLE: created when missing (id primary "
                       "key, embedding vector(DIM), model, content_hash, the --keep_fields typed), checked before "
                       "the run when present. With --previous_output the ids the run removes are deleted, so the "
                       "table holds the corpus's complete set.")
    group.add_argument("--postgres_index", choices=POSTGRES_INDEXES, default=None,
                       help="Build a pgvector index on the embedding (cosine distance) after loading, when the "
                       "table has none: hnsw or ivfflat. Default: no index.")
