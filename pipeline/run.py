"""Entry point: python -m pipeline.run --input GLOB --output_tfrecord PREFIX [options].

Reads a corpus, embeds every record with a preprocessor + encoder SavedModel pair through RunInference, and
writes the embeddings as TFRecord files of tf.train.Example; records that cannot be embedded go to a
dead-letter output as JSON lines. Run with --help for every option.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.options import DEFAULT_ENCODER, DEFAULT_PREPROCESSOR, EmbeddingOptions, parse_pair_fields, split_patterns

__all__ = ["Plan", "validate", "build", "run", "main"]

_LOCAL_RUNNERS = ("DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "PrismRunner")
_MAX_SEQ_LENGTH = 512  # Every BERT-family checkpoint's position table; a model's own limit is checked on load.


@dataclasses.dataclass(frozen=True)
class Plan:
    """Options checked and resolved: everything build() needs, nothing left to infer."""

    patterns: list
    input_format: str
    id_field: str
    text_field: str
    pair_fields: tuple | None
    encoder: str
    preprocessor: str
    model_fingerprint: str
    seq_length: int
    pooling: str
    normalize: bool
    batch_size: int
    token_budget: int
    large_model: bool
    model_copies: int | None
    output_tfrecord: str
    output_sequence: bool
    output_failed: str


def _resolve_models(options: EmbeddingOptions) -> tuple[str, str]:
    if options.model_dir and (options.encoder or options.preprocessor):
        raise ValueError("--model_dir replaces --encoder and --preprocessor; pass one or the other.")
    if options.model_dir:
        root = options.model_dir.rstrip("/")
        return root + "/encoder", root + "/preprocessor"
    return options.encoder or DEFAULT_ENCODER, options.preprocessor or DEFAULT_PREPROCESSOR


def validate(options: PipelineOptions) -> Plan:
    """Checks the options before anything runs; user mistakes raise ValueError naming the flag."""
    from transforms import embed, read

    opts = options.view_as(EmbeddingOptions)
    if not opts.input:
        raise ValueError("--input is required: a corpus file pattern such as corpus/*.jsonl.")
    if not opts.output_tfrecord:
        raise ValueError("--output_tfrecord is required: an output prefix such as out/embeddings.")
    if opts.seq_length < 2 or opts.seq_length > _MAX_SEQ_LENGTH:
        raise ValueError(f"--seq_length {opts.seq_length} must be between 2 and {_MAX_SEQ_LENGTH}.")
    patterns = split_patterns(opts.input)
    read.check_inputs_exist(patterns)
    input_format = opts.input_format or read.infer_format(patterns)
    pair_fields = parse_pair_fields(opts.pair_fields)
    if pair_fields and input_format == "text":
        raise ValueError("--pair_fields needs named fields; --input_format text has none (use jsonl, csv, tsv "
                         "or tfrecord).")
    encoder, preprocessor = _resolve_models(opts)
    embed.check_models(encoder, preprocessor)
    fingerprint = embed.model_fingerprint(encoder, preprocessor, opts.pooling, opts.normalize, opts.seq_length)
    return Plan(patterns=patterns, input_format=input_format, id_field=opts.id_field, text_field=opts.text_field,
                pair_fields=pair_fields, encoder=encoder, preprocessor=preprocessor, model_fingerprint=fingerprint,
                seq_length=opts.seq_length, pooling=opts.pooling, normalize=opts.normalize,
                batch_size=opts.batch_size, token_budget=opts.token_budget, large_model=opts.large_model,
                model_copies=opts.model_copies, output_tfrecord=opts.output_tfrecord,
                output_sequence=opts.output_sequence,
                output_failed=opts.output_failed or opts.output_tfrecord + "-failed")


def _key_by_record(record):
    return (record.id, record.content_hash, record.source), record.texts


def build(pipeline: beam.Pipeline, plan: Plan) -> None:
    """Adds read -> embed -> write to `pipeline`."""
    from transforms import embed, read, write

    handler = embed.EmbeddingModelHandler(
        plan.encoder, plan.preprocessor, seq_length=plan.seq_length, pooling=plan.pooling,
        normalize=plan.normalize, with_sequence=plan.output_sequence, max_batch_size=plan.batch_size,
        token_budget=plan.token_budget, large_model=plan.large_model, model_copies=plan.model_copies)
    records, read_failures = pipeline | "ReadCorpus" >> read.ReadCorpus(
        plan.patterns, plan.input_format, id_field=plan.id_field, text_field=plan.text_field,
        pair_fields=plan.pair_fields)
    keyed_texts = records | "KeyByRecord" >> beam.Map(_key_by_record)
    embeddings, inference_failures = keyed_texts | "Embed" >> embed.Embed(handler)
    _ = embeddings | "WriteTFRecord" >> write.WriteTFRecord(plan.output_tfrecord, plan.model_fingerprint)
    failure_lines = (
        (read_failures | "ReadFailureToJson" >> beam.Map(read.failure_to_json),
         inference_failures | "InferenceFailureToJson" >> beam.MapTuple(write.inference_failure_json))
        | "AllFailures" >> beam.Flatten())
    _ = failure_lines | "WriteFailures" >> write.WriteFailures(plan.output_failed)


def _counters(result) -> dict[str, int]:
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace("embeddings"))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (value or 0)
    return totals


def summarize(counters: dict[str, int], plan: Plan) -> str:
    """One line: what was read, embedded, failed (by reason) and truncated, and where it went."""
    failed = {name[len("failed_"):]: n for name, n in sorted(counters.items()) if name.startswith("failed_") and n}
    failed_text = ", ".join(f"{reason} {n}" for reason, n in failed.items()) or "none"
    return (f"Read {counters.get('records_read', 0)} records: embedded {counters.get('embedded', 0)} "
            f"({counters.get('tokens_embedded', 0)} tokens, {counters.get('truncated', 0)} truncated to "
            f"{plan.seq_length}), failed {sum(failed.values())} ({failed_text}). "
            f"Embeddings: {plan.output_tfrecord}-*.tfrecord; failures: {plan.output_failed}-*.jsonl")


def run(argv=None) -> beam.runners.runner.PipelineResult:
    """Parses, validates, builds and runs; waits for local runners only (a template launch must not block)."""
    options = PipelineOptions(argv)
    plan = validate(options)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, plan)
    result = pipeline.run()
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if runner in _LOCAL_RUNNERS:
        result.wait_until_finish()
        print(summarize(_counters(result), plan))
    return result


def _help_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run", description=__doc__.split("\n\n")[1],
        epilog="Beam's own pipeline options are accepted beside these: --runner (default DirectRunner), "
        "--direct_num_workers, --direct_running_mode, --project, --region, --temp_location, ... "
        "Example: python -m pipeline.run --input corpus/*.jsonl --model_dir models/minilm "
        "--output_tfrecord out/emb --pooling mean --normalize")
    EmbeddingOptions._add_argparse_args(parser)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if not argv or "-h" in argv or "--help" in argv:
        _help_parser().print_help()
        return 0
    try:
        run(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
