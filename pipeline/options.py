"""The pipeline's options, declared once; their help text doubles as the Flex Template's helpText."""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions

__all__ = ["EmbeddingOptions", "DEFAULT_ENCODER", "DEFAULT_PREPROCESSOR", "FORMATS", "POOLING_MODES", "PRECISIONS",
           "split_patterns", "parse_pair_fields"]

DEFAULT_ENCODER = "https://tfhub.dev/jeongukjae/distilbert_en_cased_L-6_H-768_A-12/1"
DEFAULT_PREPROCESSOR = "https://tfhub.dev/jeongukjae/distilbert_en_cased_preprocess/2"
# Kept literal here (and checked against transforms/ by a test) so --help needs no TensorFlow import.
FORMATS = ("text", "jsonl", "csv", "tsv", "tfrecord")
POOLING_MODES = ("pooled", "cls", "mean")
PRECISIONS = ("fp32", "bf16")


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


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {value}")
    return number


class EmbeddingOptions(PipelineOptions):
    """Options of `python -m pipeline.run`; Beam's own options (--runner, --project, ...) sit beside them."""

    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("Embedding pipeline")
        group.add_argument(
            "--input", help="Corpus file pattern(s), local or gs://, comma-separated; globs and sharded "
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
                           "--preprocessor DIR/preprocessor. Local or gs://.")
        group.add_argument("--encoder", default=None,
                           help="Encoder SavedModel: local directory, gs:// path or TF Hub URL. Default: "
                           f"{DEFAULT_ENCODER}.")
        group.add_argument("--preprocessor", default=None,
                           help="Preprocessor SavedModel (tokenize, bert_pack_inputs): local directory, gs:// "
                           f"path or TF Hub URL. Default: {DEFAULT_PREPROCESSOR}.")
        group.add_argument("--seq_length", type=_positive_int, default=128,
                           help="Longest input in tokens, [CLS] and [SEP] included; longer inputs are "
                           "truncated (and counted). At most the model's maximum (512 for DistilBERT).")
        group.add_argument("--pooling", choices=POOLING_MODES, default="pooled",
                           help="pooled: the encoder's pooled_output (DistilBERT: the [CLS] vector); cls: the "
                           "[CLS] token of sequence_output; mean: average over real tokens. pooled and cls "
                           "are about 15 percent faster with encoders from model.export (their last layer "
                           "computes [CLS] alone) unless --output_sequence asks for every token.")
        group.add_argument("--normalize", action="store_true", default=False,
                           help="L2-normalise every embedding (cosine similarity becomes a dot product).")
        group.add_argument("--batch_size", type=_positive_int, default=512,
                           help="Texts handed to the model at once (fewer only at the end of a bundle). A batch "
                           "is sorted by length and cut into sub-batches of similar lengths: the larger the "
                           "batch, the less padding (about 95 percent of computed tokens are real at 512 on short "
                           "texts).")
        group.add_argument("--token_budget", type=_positive_int, default=4096,
                           help="Most padded tokens encoded at once; a batch is sorted by length and cut "
                           "into sub-batches, each padded only to its own longest text.")
        group.add_argument("--precision", choices=PRECISIONS, default="fp32",
                           help="fp32, or bf16 to run the encoder's matrix multiplications in bfloat16 on CPU "
                           "workers with AVX512_BF16 or AMX (e.g. Zen 4 and later: about 1.6x faster; Sapphire "
                           "Rapids and later, with AMX: about 4x), cosine to fp32 above 0.999 (measured on a "
                           "random-weight DistilBERT; check your model). Fastest for encoders exported by "
                           "model.export; works with any SavedModel. Changes the model fingerprint.")
        group.add_argument("--large_model", action="store_true", default=False,
                           help="Hold one copy of the models per machine, shared by all worker processes.")
        group.add_argument("--model_copies", type=_positive_int, default=None,
                           help="Hold exactly this many model copies per machine (implies sharing).")
        group.add_argument("--output_tfrecord", default=None,
                           help="Output prefix, local or gs://: writes PREFIX-SSSSS-of-NNNNN.tfrecord files of "
                           "tf.train.Example with id, embedding, model and content_hash. Give this, "
                           "--output_bigquery, or both.")
        group.add_argument("--output_sequence", action="store_true", default=False,
                           help="Also write each record's unpadded token vectors (sequence, sequence_length).")
        group.add_argument("--output_failed", default=None,
                           help="Dead-letter prefix: records that could not be embedded, as JSON lines with "
                           "source, reason, detail and the raw record. Default: OUTPUT_TFRECORD-failed; "
                           "required when --output_bigquery is the only output.")
        group.add_argument(
            "--output_bigquery", default=None,
            help="BigQuery table PROJECT:DATASET.TABLE (or PROJECT.DATASET.TABLE) to append the embeddings to, "
            "one row per record: id STRING, embedding FLOAT64 REPEATED, model STRING, content_hash STRING, "
            "embedded_at TIMESTAMP, run_id STRING (--run_id). The dataset must exist; the table is created "
            "when missing. An existing table must have these columns with these types (NULLABLE is fine); "
            "its other columns must not be REQUIRED. Checked before the job starts. With a BigQuery "
            "--previous_output the run keeps this table current instead of appending: one row per id, "
            "exactly the corpus's complete set.")
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
        group.add_argument("--previous_output", default=None,
                           help="An earlier run's embeddings, to update incrementally: only records whose id is "
                           "new or whose content_hash changed are embedded, unchanged embeddings are copied forward "
                           "and records gone from the corpus are dropped. Everything is re-embedded when the "
                           "earlier run used another model. Either the --output_tfrecord prefix of an earlier run, "
                           "where {latest} picks the newest complete run before this one, e.g. "
                           "gs://bucket/emb/run={latest}/part (none yet: embed everything); or a BigQuery table "
                           "PROJECT:DATASET.TABLE, usually the --output_bigquery table itself, which the run then "
                           "keeps current: it loads its complete set into TABLE__run_RUNID and MERGEs that into "
                           "the --output_bigquery table in one statement (needs --bigquery_method file_loads and "
                           "no --output_tfrecord; a missing --output_bigquery table: embed everything).")
