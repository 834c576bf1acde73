"""Entry point: python -m pipeline.run --input GLOB --output_tfrecord PREFIX (or another sink) [options].

Reads a corpus, embeds every record with a preprocessor + encoder SavedModel pair through RunInference, and
writes the embeddings to every sink asked for: TFRecord files of tf.train.Example, a BigQuery table, Parquet
files, a Vertex AI Vector Search update, a PostgreSQL table with pgvector; records that cannot be embedded go to a
dead-letter output as JSON lines. Run with --help for every option.
"""

from __future__ import annotations

# Imports of runtime, transforms, psycopg and the like sit inside the functions that use them: the command line
# answers --help and usage errors before it pays for them (see pipeline/cli.py).
import logging
import os
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TestOptions

from pipeline.options import LOCAL_RUNNERS, UsageError, check_argv
from pipeline.plan import Plan, validate
from transforms import records as records_lib

__all__ = ["build", "remove_partial_files", "counters", "summarize", "prepare", "launch", "run"]


def build(pipeline: beam.Pipeline, plan: Plan) -> None:
    """Adds read -> embed -> check -> write to `pipeline`; with an earlier output, embeds only what changed since.

    Every sink of the plan writes (transforms.sinks); each commits (the TFRecord manifest, the BigQuery MERGE, the
    PostgreSQL merge, the files) only after transforms.guard.CheckRun, which fails the run when too much failed or
    would be deleted.
    """
    from transforms import dedupe, embed, guard, progress, read, sinks, write

    inputs, model, outputs, incremental = plan.inputs, plan.model, plan.outputs, plan.incremental
    handler = embed.EmbeddingModelHandler(
        model.encoder, model.preprocessor, seq_length=model.seq_length, pooling=model.pooling,
        normalize=model.normalize, with_sequence=outputs.sequence, max_batch_size=model.batch_size,
        token_budget=model.token_budget, large_model=model.large_model, model_copies=model.model_copies,
        precision=model.precision, chunking=model.chunking, pairs=bool(inputs.pair_fields), prompt=model.prompt)
    reader = read.ReadCorpus(list(inputs.patterns), inputs.input_format, id_field=inputs.id_field,
                             text_field=inputs.text_field, pair_fields=inputs.pair_fields,
                             keep_fields=plan.layout.kept, limits=plan.limits)
    parsed, read_failures = pipeline | "ReadCorpus" >> reader
    records, duplicates = parsed | "DropDuplicateIds" >> dedupe.DropDuplicateIds(
        reader.records_again(), inputs.estimated_records, raw_of=reader.raw_records())
    selected, previous = _select_changed(pipeline, plan, records) if incremental.previous_output else (None, None)
    to_embed = selected.to_embed if selected else records
    keyed_texts = to_embed | "KeyByRecord" >> beam.Map(_key_by_record)
    embeddings, inference_failures = keyed_texts | "Embed" >> embed.Embed(handler, chunk_text=outputs.chunk_text)
    # An incremental run embeds only what changed: its total is not known up front.
    total = None if incremental.previous_output else inputs.estimated_records
    _ = embeddings | "ReportProgress" >> beam.ParDo(progress.ReportProgress(total))
    if model.chunking:
        embeddings = embed.chunk_records(embeddings)
    failures = ((read_failures, duplicates, inference_failures | "InferenceFailure" >> beam.MapTuple(
                 records_lib.inference_failure, raw_of=reader.raw_records()))
                | "RecordFailures" >> beam.Flatten())
    failure_files = failures | "WriteFailures" >> write.WriteFailures(outputs.failed)
    parts = {"parsed": parsed, "read_failures": read_failures, "failures": failures, "embedded": embeddings,
             "after": failure_files}
    earlier = previous
    if selected:
        if model.chunking:  # Deletions are of documents: the guard weighs them against the earlier documents.
            previous = previous | "PreviousDocuments" >> beam.Keys() | "OnePerDocument" >> beam.Distinct()
        parts.update(carried=selected.carried_forward, previous=previous, deleted=selected.deleted)
    verdict = parts | "CheckRun" >> guard.CheckRun(plan.max_failed_fraction, plan.max_deleted_fraction,
                                                   f"{outputs.failed}-*.jsonl")
    written = sinks.Outputs(embeddings, verdict, model.fingerprint, incremental.run_id, plan.layout, selected, earlier)
    for sink in plan.sinks:  # Each commits only after the verdict.
        sink.write(written)


def _select_changed(pipeline: beam.Pipeline, plan: Plan, records):
    """Reads the earlier output and splits the records into those to embed and those to carry forward; returns
    (incremental.Selected, the earlier output's records)."""
    from transforms import incremental

    run = plan.incremental
    chunks = plan.model.chunking is not None
    previous = pipeline | "ReadPrevious" >> (incremental.ReadPreviousTable(run.previous_output, chunks=chunks,
                                                                           kept=plan.layout.kept)
                                             if run.bigquery_update else incremental.ReadPrevious(run.previous_files))
    selected = records | "SelectChanged" >> incremental.SelectChanged(
        previous, plan.model.fingerprint, with_sequence=plan.outputs.sequence and not run.bigquery_update)
    return selected, previous


def _key_by_record(record: records_lib.Record) -> tuple[records_lib.RecordKey, tuple[str, ...]]:
    return record.key, record.texts


def remove_partial_files(prefixes) -> int:
    """Removes the beam-temp-* and PREFIX.runs-* folders that an interrupted earlier attempt at these output
    prefixes left.

    Beam's file sinks write under OUTPUT_DIR/beam-temp-BASENAME-UUID and move the files into place at the end,
    transforms.write keeps its sorted runs under PREFIX.runs-UUID; a run killed before the end leaves them.
    Only folders named for this run's own prefixes are touched; two runs writing the same prefix at once are not
    supported anyway. Returns how many were removed.
    """
    import glob
    import shutil

    removed = 0
    for prefix in prefixes:
        if not prefix:
            continue
        directory, base = FileSystems.split(prefix)
        if "://" not in prefix:  # Beam's local match lists files only; the folders go whole.
            folders = (glob.glob(os.path.join(directory, glob.escape(f"beam-temp-{base}-") + "*"))
                       + glob.glob(glob.escape(prefix + ".runs-") + "*"))  # transforms.write's sorted runs.
            for folder in folders:
                logging.info("Removing %s, left by an interrupted earlier attempt.", folder)
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
            continue
        pattern = FileSystems.join(directory, f"beam-temp-{base}-**")
        try:
            stale = [metadata.path for result in FileSystems.match([pattern, prefix + ".runs-**"])
                     for metadata in result.metadata_list]
        except Exception as err:  # noqa: BLE001  Best effort: a listing error must not stop the run.
            logging.debug("Cannot list %s: %s", pattern, err)
            continue
        if stale:
            logging.info("Removing %d files under %s, left by an interrupted earlier attempt.", len(stale), pattern)
            FileSystems.delete(stale)
            removed += len(stale)
    return removed


def counters(result) -> dict[str, int]:
    """A finished run's counters (transforms.records' names) by name, summed over steps."""
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(records_lib.NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (value or 0)
    return totals


def _destinations(plan: Plan) -> str:
    return ", ".join(sink.describe() for sink in plan.sinks)


def summarize(counts: dict[str, int], plan: Plan) -> str:
    """One line: what was read, embedded, failed (by reason) and truncated, and where it went."""
    prefix = records_lib.FAILED_PREFIX
    failed = {name[len(prefix):]: n for name, n in sorted(counts.items()) if name.startswith(prefix) and n}
    failed_text = ", ".join(f"{reason} {n}" for reason, n in failed.items()) or "none"
    incremental_text = ""
    if plan.incremental.previous_output:
        incremental_text = (
            f". Since {plan.incremental.previous_output}: new {counts.get('new', 0)}, changed "
            f"{counts.get('changed', 0)} ({counts.get('changed_model', 0)} for another model), unchanged "
            f"{counts.get('unchanged', 0)} (carried forward; kept fields changed in {counts.get('fields_changed', 0)})"
            f", deleted {counts.get('deleted', 0)}")
    unknown = counts.get(records_lib.UNKNOWN_ONLY, 0)
    unknown_text = (f" Warning: {unknown} {'documents' if plan.model.chunking else 'records'} tokenized to [UNK] "
                    "only (one 'word' over 100 characters without a space, as Hugging Face tokenizes it): embedded, "
                    "but their vectors say nothing of their text." if unknown else "")
    return (f"Read {counts.get(records_lib.RECORDS_READ, 0)} records: embedded {_embedded_text(counts, plan)}, "
            f"failed {sum(failed.values())} ({failed_text}).{unknown_text} "
            f"Embeddings: {_destinations(plan)}; failures: {plan.outputs.failed}-*.jsonl" + incremental_text)


def _embedded_text(counts: dict[str, int], plan: Plan) -> str:
    """ "120 (5000 tokens, 3 truncated to 128)", or with chunking "120 documents as 410 chunks (...)"."""
    embedded, tokens = counts.get(records_lib.EMBEDDED, 0), counts.get(records_lib.TOKENS_EMBEDDED, 0)
    chunking = plan.model.chunking
    if chunking is None:
        truncated = counts.get(records_lib.TRUNCATED, 0)
        return f"{embedded} ({tokens} tokens, {truncated} truncated to {plan.model.seq_length})"
    return (f"{embedded} documents as {counts.get(records_lib.CHUNKS, 0)} chunks ({tokens} tokens; "
            f"{counts.get(records_lib.DOCUMENTS_CHUNKED, 0)} documents needed more than one chunk; --chunking "
            f"{chunking.mode} of {chunking.tokens} wordpieces, overlap {chunking.overlap}: nothing truncated)")


def prepare(argv: list[str], strict: bool = True) -> tuple[PipelineOptions, Plan]:
    """Parses and validates the command line into Beam's options and a Plan.

    With `strict` (the command line), an unknown flag is a UsageError; the Flex Template launcher passes
    strict=False, since Dataflow's launcher adds arguments of its own.

    Raises:
        UsageError: for a mistake in the command line or in what it names (exit code 2 from main).
    """
    if strict:
        check_argv(argv)
    options = PipelineOptions(argv)
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = "DirectRunner"
    try:
        plan = validate(options)
    except UsageError:
        raise
    except ValueError as err:
        raise UsageError(str(err)) from err
    return options, plan


def launch(options: PipelineOptions, plan: Plan) -> beam.runners.runner.PipelineResult:
    """Builds and runs the plan; waits for local runners only (a template launch must not block).

    Raises:
        transforms.guard.RunRefused: when a local run failed its checks (exit code 1).
    """
    note = plan.model.settings_note
    logging.info("%s.", note[:1].upper() + note[1:])
    if not options.view_as(TestOptions).dry_run:  # A dry run (Dataflow's translation only) writes nothing.
        remove_partial_files([plan.outputs.failed] + [prefix for sink in plan.sinks
                                                      for prefix in sink.partial_prefixes()])
    pipeline = beam.Pipeline(options=options)
    build(pipeline, plan)
    result = pipeline.run()
    if options.view_as(StandardOptions).runner in LOCAL_RUNNERS:
        result.wait_until_finish()
    return result


def run(argv=None, strict: bool = True) -> beam.runners.runner.PipelineResult:
    """Parses, validates, builds and runs (prepare, then launch); see those for `strict` and what is raised."""
    return launch(*prepare(list(sys.argv[1:] if argv is None else argv), strict))


if __name__ == "__main__":  # python -m pipeline.run: the command line lives in pipeline.cli.
    from pipeline import cli

    cli.exit_process(cli.main())
