"""Entry point: python -m pipeline.run --input GLOB (--output_tfrecord PREFIX | --output_bigquery TABLE) [options].

Reads a corpus, embeds every record with a preprocessor + encoder SavedModel pair through RunInference, and
writes the embeddings as TFRecord files of tf.train.Example, rows of a BigQuery table, or both; records that
cannot be embedded go to a dead-letter output as JSON lines. Run with --help for every option.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
import sys
import urllib.error
import warnings

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions

from pipeline.options import (
    DEFAULT_ENCODER,
    DEFAULT_POOLING,
    DEFAULT_PREPROCESSOR,
    DEFAULT_SEQ_LENGTH,
    MAX_SEQ_LENGTH,
    EmbeddingOptions,
    UsageError,
    check_argv,
    options_parser,
    parse_pair_fields,
    split_patterns,
)

__all__ = ["Plan", "validate", "build", "run", "main"]

_LOCAL_RUNNERS = ("DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "PrismRunner")
_NOISY_LOGGERS = ("apache_beam", "absl", "tensorflow", "google", "urllib3", "h5py")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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
    precision: str
    large_model: bool
    model_copies: int | None
    output_tfrecord: str | None  # None: BigQuery is the only sink.
    output_sequence: bool
    output_failed: str
    run_id: str
    previous_output: str | None  # An earlier run's prefix ({latest} resolved) or table; None: embed everything.
    previous_files: tuple
    output_bigquery: str | None  # PROJECT:DATASET.TABLE; None: no BigQuery sink.
    bigquery_method: str
    bigquery_table_exists: bool  # Append with the table's own schema; else create it with transforms.bigquery's.
    # --previous_output names a table: read it (previous_output, None when there is none yet) and keep
    # output_bigquery current instead of appending (transforms.bigquery.UpdateTable).
    bigquery_update: bool = False
    max_failed_fraction: float = 0.1
    max_deleted_fraction: float = 0.5
    settings_note: str = ""  # Where pooling, normalisation and seq_length came from, for the user.
    estimated_records: int | None = None  # For progress; None when unknown (compressed input).


def _resolve_settings(opts: EmbeddingOptions, encoder: str) -> tuple[str, bool, int, str]:
    """--pooling, --normalize and --seq_length, each from its flag, else the model's own, else the default.

    Returns them and one line saying which came from where; warns when a flag overrides the model's own.
    """
    import runtime
    from transforms.files import BeamFiles

    recorded = runtime.model_defaults(encoder, files=BeamFiles())
    recorded_seq_length = recorded.get("max_seq_length")
    if recorded_seq_length is not None:
        recorded_seq_length = min(recorded_seq_length, MAX_SEQ_LENGTH)
    chosen = {}
    for name, given, own, default in (("pooling", opts.pooling, recorded.get("pooling"), DEFAULT_POOLING),
                                      ("normalize", opts.normalize, recorded.get("normalize"), False),
                                      ("seq_length", opts.seq_length, recorded_seq_length, DEFAULT_SEQ_LENGTH)):
        if given is not None:
            chosen[name] = (given, "flag")
            if own is not None and given != own and name != "seq_length":
                logging.warning("--%s %s overrides the model's own setting (%s): its vectors will differ from "
                                "sentence-transformers'.", name, given, own)
        else:
            chosen[name] = (own, "model") if own is not None else (default, "default")
    note = ", ".join(f"{name} {value} ({source})" for name, (value, source) in chosen.items())
    return chosen["pooling"][0], chosen["normalize"][0], chosen["seq_length"][0], note


def _resolve_models(options: EmbeddingOptions) -> tuple[str, str]:
    if options.model_dir and (options.encoder or options.preprocessor):
        raise ValueError("--model_dir replaces --encoder and --preprocessor; pass one or the other.")
    if options.model_dir:
        root = options.model_dir.rstrip("/")
        if not FileSystems.exists(root + "/encoder/saved_model.pb"):
            what = "does not exist" if not FileSystems.exists(root) else "holds no encoder/saved_model.pb"
            raise ValueError(f"--model_dir {options.model_dir} {what}: pass a directory written by model.export "
                             "(it holds encoder/ and preprocessor/).")
        return root + "/encoder", root + "/preprocessor"
    return options.encoder or DEFAULT_ENCODER, options.preprocessor or DEFAULT_PREPROCESSOR


def _resolve_run(options: EmbeddingOptions) -> dict:
    """This run's id, its output prefixes with {run_id} filled in, and the earlier TFRecord output it updates."""
    from transforms import bigquery, incremental

    run_id = options.run_id or incremental.default_run_id()
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"--run_id {run_id!r} goes into paths: use letters, digits, '.', '_' and '-' only.")
    output_tfrecord, output_failed = (
        path.replace(incremental.RUN_ID_PLACEHOLDER, run_id) if path else None
        for path in (options.output_tfrecord, options.output_failed))
    if not output_failed and output_tfrecord:
        output_failed = output_tfrecord + "-failed"
    previous_output, previous_files = None, ()
    if options.previous_output and not bigquery.is_table_spec(options.previous_output):
        if not output_tfrecord:
            raise ValueError(f"--previous_output {options.previous_output} is a TFRecord prefix and needs "
                             "--output_tfrecord; to update a BigQuery table instead, name it: --previous_output "
                             "PROJECT:DATASET.TABLE with --output_bigquery.")
        if incremental.RUN_ID_PLACEHOLDER in options.previous_output:
            raise ValueError(f"--previous_output {options.previous_output} names an earlier run: use "
                             f"{incremental.LATEST_PLACEHOLDER} or that run's prefix, not "
                             f"{incremental.RUN_ID_PLACEHOLDER}.")
        previous_output = incremental.resolve_previous(options.previous_output, run_id)
        if previous_output is None:
            logging.info("--previous_output %s: no complete run before %s; embedding everything.",
                         options.previous_output, run_id)
        elif previous_output == output_tfrecord:
            raise ValueError(f"--previous_output {previous_output} is this run's own --output_tfrecord; write each "
                             "run to its own prefix, e.g. gs://bucket/emb/run={run_id}/part.")
        else:
            previous_files = tuple(incremental.previous_files(previous_output))
    return {"run_id": run_id, "output_tfrecord": output_tfrecord, "output_failed": output_failed,
            "previous_output": previous_output, "previous_files": previous_files}


def _resolve_bigquery(options: PipelineOptions):
    """The --output_bigquery table, checked without network access; None when not asked for."""
    from transforms import bigquery

    opts = options.view_as(EmbeddingOptions)
    if not opts.output_bigquery:
        return None
    table = bigquery.parse_table(opts.output_bigquery)
    temp_location = options.view_as(GoogleCloudOptions).temp_location
    if opts.bigquery_method == "file_loads" and not (temp_location or "").startswith("gs://"):
        raise ValueError(f"--output_bigquery with --bigquery_method file_loads stages files for BigQuery load jobs "
                         f"under --temp_location, which must be gs:// (got {temp_location or 'none'}): pass "
                         "--temp_location gs://BUCKET/tmp, or --bigquery_method streaming.")
    return table


def _resolve_previous_table(options: PipelineOptions, output_table) -> dict:
    """--previous_output naming a BigQuery table: the table to read (None: none yet) and bigquery_update; else {}."""
    from transforms import bigquery

    opts = options.view_as(EmbeddingOptions)
    if not opts.previous_output or not bigquery.is_table_spec(opts.previous_output):
        return {}
    previous = bigquery.parse_table(opts.previous_output, flag="--previous_output")
    if output_table is None:
        raise ValueError(f"--previous_output {opts.previous_output} is a BigQuery table: pass --output_bigquery, the "
                         "table the run keeps current (usually that same table).")
    if opts.output_tfrecord:
        raise ValueError(f"--previous_output {opts.previous_output} is a BigQuery table, which updates the "
                         "--output_bigquery table only: drop --output_tfrecord, or give a TFRecord --previous_output "
                         "to write TFRecord.")
    if opts.bigquery_method != "file_loads":
        raise ValueError(f"--bigquery_method {opts.bigquery_method} cannot keep a table current: with a BigQuery "
                         "--previous_output the run loads its complete set with load jobs; use --bigquery_method "
                         "file_loads (the default).")
    exists = bigquery.check_previous_table(previous, output_table, options.view_as(GoogleCloudOptions).project)
    if not exists:
        logging.info("--previous_output %s does not exist yet; embedding everything.", previous.spec)
    return {"previous_output": previous.spec if exists else None, "bigquery_update": True}


def _check_buckets(options: PipelineOptions, paths_by_flag: dict) -> None:
    """Fails fast on a gs:// path whose bucket does not exist, before Beam fails late or reads nothing."""
    from apache_beam.io.gcp import gcsio
    from google.api_core import exceptions

    gcs, checked = None, set()
    for flag, paths in paths_by_flag.items():
        for path in paths:
            bucket = path[len("gs://"):].split("/", 1)[0] if path and path.startswith("gs://") else None
            if not bucket or bucket in checked:
                continue
            gcs = gcs or gcsio.GcsIO(pipeline_options=options)
            try:
                found = gcs.get_bucket(bucket)
            except exceptions.Forbidden:  # Object permissions without storage.buckets.get: let Beam try.
                found = True
            if not found:
                raise ValueError(f"{flag} {path}: bucket gs://{bucket} does not exist (or is not visible to "
                                 "these credentials).")
            checked.add(bucket)


def _check_writable(paths_by_flag: dict) -> None:
    """Fails fast on a local output prefix whose directory cannot be created or written (gs:// is checked by
    _check_buckets), instead of failing after the model has loaded and every record was embedded."""
    import tempfile

    for flag, path in paths_by_flag.items():
        if not path or "://" in path:
            continue
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as err:
            raise ValueError(f"{flag} {path}: cannot write to {directory} ({err.strerror or err}).") from err


def validate(options: PipelineOptions) -> Plan:
    """Checks the options before anything runs; user mistakes raise ValueError naming the flag."""
    import runtime
    from transforms import bigquery, preflight, read
    from transforms.files import BeamFiles

    opts = options.view_as(EmbeddingOptions)
    if not opts.input:
        raise ValueError("--input is required: a corpus file pattern such as corpus/*.jsonl.")
    if not opts.output_tfrecord and not opts.output_bigquery:
        raise ValueError("--output_tfrecord or --output_bigquery is required: an output prefix such as "
                         "out/embeddings, or a table such as my-project:my_dataset.embeddings.")
    if not opts.output_tfrecord and not opts.output_failed:
        raise ValueError("--output_failed is required when --output_bigquery is the only output: a prefix for "
                         "the records that could not be embedded, such as gs://bucket/failed/part.")
    bigquery_table = _resolve_bigquery(options)
    patterns = split_patterns(opts.input)
    _check_buckets(options, {
        "--input": patterns, "--output_tfrecord": [opts.output_tfrecord], "--output_failed": [opts.output_failed],
        "--model_dir": [opts.model_dir], "--encoder": [opts.encoder], "--preprocessor": [opts.preprocessor],
        "--previous_output": [opts.previous_output],
        "--temp_location": [options.view_as(GoogleCloudOptions).temp_location
                            if bigquery_table and opts.bigquery_method == "file_loads" else None]})
    read.check_inputs_exist(patterns)
    input_format = opts.input_format or read.infer_format(patterns)
    pair_fields = parse_pair_fields(opts.pair_fields)
    if pair_fields and input_format == "text":
        raise ValueError("--pair_fields needs named fields; --input_format text has none (use jsonl, csv, tsv "
                         "or tfrecord).")
    preflight.check_sample(patterns, input_format, pair_fields or (opts.text_field,))
    estimated_records = preflight.estimate_records(patterns, input_format)
    encoder, preprocessor = _resolve_models(opts)
    runtime.check_models(encoder, preprocessor, files=BeamFiles())
    pooling, normalize, seq_length, settings_note = _resolve_settings(opts, encoder)
    runtime.check_seq_length(preprocessor, seq_length, files=BeamFiles())
    fingerprint = runtime.model_fingerprint(encoder, preprocessor, pooling, normalize, seq_length, opts.precision,
                                            files=BeamFiles())
    run_plan = _resolve_run(opts)
    _check_writable({"--output_tfrecord": run_plan["output_tfrecord"], "--output_failed": run_plan["output_failed"]})
    table_exists = bool(bigquery_table) and bigquery.check_table(bigquery_table,
                                                                 options.view_as(GoogleCloudOptions).project)
    run_plan.update(_resolve_previous_table(options, bigquery_table))
    return Plan(patterns=patterns, input_format=input_format, id_field=opts.id_field, text_field=opts.text_field,
                pair_fields=pair_fields, encoder=encoder, preprocessor=preprocessor, model_fingerprint=fingerprint,
                seq_length=seq_length, pooling=pooling, normalize=normalize, settings_note=settings_note,
                max_failed_fraction=opts.max_failed_fraction, max_deleted_fraction=opts.max_deleted_fraction,
                estimated_records=estimated_records,
                batch_size=opts.batch_size, token_budget=opts.token_budget, precision=opts.precision,
                large_model=opts.large_model, model_copies=opts.model_copies, output_sequence=opts.output_sequence,
                output_bigquery=bigquery_table.spec if bigquery_table else None,
                bigquery_method=opts.bigquery_method, bigquery_table_exists=table_exists, **run_plan)


def _key_by_record(record):
    return (record.id, record.content_hash, record.source), record.texts


def build(pipeline: beam.Pipeline, plan: Plan) -> None:
    """Adds read -> embed -> check -> write to `pipeline`; with an earlier output, embeds only what changed since.

    Every sink writes; the steps that commit a run (the TFRecord manifest, the BigQuery MERGE) wait for
    transforms.guard.CheckRun, which fails the run when too much failed or would be deleted.
    """
    from transforms import bigquery, dedupe, embed, guard, incremental, progress, read, write

    handler = embed.EmbeddingModelHandler(
        plan.encoder, plan.preprocessor, seq_length=plan.seq_length, pooling=plan.pooling,
        normalize=plan.normalize, with_sequence=plan.output_sequence, max_batch_size=plan.batch_size,
        token_budget=plan.token_budget, large_model=plan.large_model, model_copies=plan.model_copies,
        precision=plan.precision)
    parsed, read_failures = pipeline | "ReadCorpus" >> read.ReadCorpus(
        plan.patterns, plan.input_format, id_field=plan.id_field, text_field=plan.text_field,
        pair_fields=plan.pair_fields)
    records, duplicates = parsed | "DropDuplicateIds" >> dedupe.DropDuplicateIds()
    carried_forward, previous, deleted = None, None, None
    if plan.previous_output:
        previous = pipeline | "ReadPrevious" >> (incremental.ReadPreviousTable(plan.previous_output)
                                                 if plan.bigquery_update else
                                                 incremental.ReadPrevious(plan.previous_files))
        records, carried_forward, deleted = (records, previous) | "SelectChanged" >> incremental.SelectChanged(
            plan.model_fingerprint, with_sequence=plan.output_sequence and not plan.bigquery_update)
    keyed_texts = records | "KeyByRecord" >> beam.Map(_key_by_record)
    embeddings, inference_failures = keyed_texts | "Embed" >> embed.Embed(handler)
    # An incremental run embeds only what changed: its total is not known up front.
    total = None if plan.previous_output else plan.estimated_records
    _ = embeddings | "ReportProgress" >> beam.ParDo(progress.ReportProgress(total))
    read_failure_lines = ((read_failures, duplicates) | "ReadAndDuplicateFailures" >> beam.Flatten()
                          | "ReadFailureToJson" >> beam.Map(read.failure_to_json))
    record_failure_lines = (
        (read_failure_lines,
         inference_failures | "InferenceFailureToJson" >> beam.MapTuple(write.inference_failure_json))
        | "RecordFailures" >> beam.Flatten())
    failure_files = record_failure_lines | "WriteFailures" >> write.WriteFailures(plan.output_failed)
    parts = {"parsed": parsed, "read_failures": read_failures, "failures": record_failure_lines,
             "embedded": embeddings, "after": failure_files}
    if previous is not None:
        parts.update(carried=carried_forward, previous=previous, deleted=deleted)
    verdict = parts | "CheckRun" >> guard.CheckRun(plan.max_failed_fraction, plan.max_deleted_fraction,
                                                   f"{plan.output_failed}-*.jsonl")
    if plan.output_bigquery and not plan.bigquery_update:
        # Rows embedded by this run only (embedded_at stays true); WriteTFRecord counts unless it is absent.
        refused_rows = embeddings | "WriteBigQuery" >> bigquery.WriteBigQuery(
            plan.output_bigquery, plan.model_fingerprint, plan.run_id, method=plan.bigquery_method,
            table_exists=plan.bigquery_table_exists, count=not plan.output_tfrecord, verdict=verdict)
        # Written apart from the others, which the check waits for; the name still matches PREFIX-*.jsonl.
        _ = refused_rows | "WriteBigQueryFailures" >> write.WriteFailures(plan.output_failed + "-bigquery")
    if plan.output_tfrecord:
        to_write = embeddings if carried_forward is None else (embeddings, carried_forward)
        written = to_write | "WriteTFRecord" >> write.WriteTFRecord(
            plan.output_tfrecord, plan.model_fingerprint, expected_records=plan.estimated_records, verdict=verdict)
        _ = written | "WriteManifest" >> incremental.WriteManifest(plan.output_tfrecord, plan.run_id,
                                                                   plan.model_fingerprint, verdict=verdict)
    if plan.bigquery_update:
        # The run's complete set (embedded and carried forward) replaces the table's rows in one MERGE.
        to_update = embeddings if carried_forward is None else (embeddings, carried_forward)
        _ = to_update | "UpdateBigQuery" >> bigquery.UpdateTable(
            plan.output_bigquery, plan.model_fingerprint, plan.run_id, verdict=verdict)


def remove_partial_files(plan: Plan) -> int:
    """Removes the beam-temp-* and PREFIX.runs-* folders that an interrupted earlier attempt at this run's
    prefixes left.

    Beam's file sinks write under OUTPUT_DIR/beam-temp-BASENAME-UUID and move the files into place at the end,
    transforms.write keeps its sorted runs under PREFIX.runs-UUID; a run killed before the end leaves them.
    Only folders named for this run's own prefixes are touched; two runs writing the same prefix at once are not
    supported anyway. Returns how many were removed.
    """
    import glob
    import shutil

    removed = 0
    for prefix in (plan.output_tfrecord, plan.output_failed):
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


def _counters(result) -> dict[str, int]:
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace("embeddings"))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (value or 0)
    return totals


def _destinations(plan: Plan) -> str:
    sinks = [f"{plan.output_tfrecord}-*.tfrecord"] if plan.output_tfrecord else []
    return ", ".join(sinks + ([f"BigQuery {plan.output_bigquery}"] if plan.output_bigquery else []))


def summarize(counters: dict[str, int], plan: Plan) -> str:
    """One line: what was read, embedded, failed (by reason) and truncated, and where it went."""
    failed = {name[len("failed_"):]: n for name, n in sorted(counters.items()) if name.startswith("failed_") and n}
    failed_text = ", ".join(f"{reason} {n}" for reason, n in failed.items()) or "none"
    incremental_text = ""
    if plan.previous_output:
        incremental_text = (
            f". Since {plan.previous_output}: new {counters.get('new', 0)}, changed {counters.get('changed', 0)} "
            f"({counters.get('changed_model', 0)} for another model), unchanged {counters.get('unchanged', 0)} "
            f"(carried forward), deleted {counters.get('deleted', 0)}")
    return (f"Read {counters.get('records_read', 0)} records: embedded {counters.get('embedded', 0)} "
            f"({counters.get('tokens_embedded', 0)} tokens, {counters.get('truncated', 0)} truncated to "
            f"{plan.seq_length}), failed {sum(failed.values())} ({failed_text}). "
            f"Embeddings: {_destinations(plan)}; failures: {plan.output_failed}-*.jsonl"
            + incremental_text)


def run(argv=None, strict: bool = True) -> beam.runners.runner.PipelineResult:
    """Parses, validates, builds and runs; waits for local runners only (a template launch must not block).

    With `strict` (the command line), an unknown flag is a UsageError; the Flex Template launcher passes
    strict=False, since Dataflow's launcher adds arguments of its own.

    Raises:
        UsageError: for a mistake in the command line or in what it names (exit code 2 from main).
        transforms.guard.RunRefused: when a local run failed its checks (exit code 1).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
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
    logging.info("%s.", plan.settings_note[:1].upper() + plan.settings_note[1:])
    remove_partial_files(plan)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, plan)
    result = pipeline.run()
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if runner in _LOCAL_RUNNERS:
        result.wait_until_finish()
        print(summarize(_counters(result), plan))
    return result


_EPILOG = """\
Beam's own pipeline options are accepted beside these: --runner (default DirectRunner), --direct_num_workers,
--direct_running_mode, --project, --region, --temp_location, ... (see Beam's documentation).
--verbose shows every log line and the traceback of a failure.

Exit codes: 0 done; 1 the run failed (bad data past --max_failed_fraction, a refused deletion, an I/O or
model error); 2 a usage error (a flag, its value, or what it names); 130 interrupted.

Example: python -m pipeline.run --input corpus/*.jsonl --model_dir models/minilm --output_tfrecord out/emb"""


def _help_parser():
    return options_parser(description=__doc__.split("\n\n")[1], beam_options=False, epilog=_EPILOG)


def _quiet(verbose: bool) -> None:
    """Our INFO lines only; TensorFlow's and Beam's start-up chatter (e.g. "failed call to cuInit") with --verbose."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.CRITICAL)
    if not verbose:
        warnings.filterwarnings("ignore", category=UserWarning, module="tensorflow_hub")
        for handler in logging.getLogger().handlers:
            handler.addFilter(_drop_known_noise)


# Warnings that say nothing to a user: Beam 2.77's RunInference cannot import its model manager, then logs this
# once per batch of metrics on Linux too.
_KNOWN_NOISE = ("Resource module is not available for current platform",)


def _drop_known_noise(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_KNOWN_NOISE)


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow and finds its devices with the process's stderr closed: its C++ start-up lines ("Could
    not find cuda drivers", absl's "All log messages before absl::InitializeLog()", "failed call to cuInit")
    ignore TF_CPP_MIN_LOG_LEVEL. An import error still raises as usual."""
    if "tensorflow" in sys.modules:
        return
    stderr = 2  # The process's own, which TensorFlow's C++ code writes to, whatever sys.stderr is now.
    saved = os.dup(stderr)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stderr)
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # Device discovery logs "failed call to cuInit" on CPU machines.
    finally:
        os.dup2(saved, stderr)
        os.close(saved)
        os.close(devnull)


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception of a chain: Beam wraps a worker's error in its own."""
    seen = set()
    while id(err) not in seen and (err.__cause__ or err.__context__) is not None:
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return err


def _failure_line(err: BaseException) -> str:
    """One line for a failed run: our refusal as it is, else the innermost error's type and first line."""
    from transforms.guard import RunRefused

    for candidate in (err, _root_cause(err)):
        if isinstance(candidate, RunRefused):
            return str(candidate.args[0] if candidate.args else candidate).split(" [while running")[0].strip()
    text = f"{err}"
    marker = "RunRefused: "
    if marker in text:  # A refusal that crossed a process boundary as text.
        return text[text.index(marker) + len(marker):].splitlines()[0].split(" [while running")[0].strip()
    cause = _root_cause(err)
    message = (str(cause).strip().splitlines() or [""])[0][:500]
    message = f"{type(cause).__name__}: {message}" if message else type(cause).__name__
    if type(cause).__name__ == "DefaultCredentialsError":  # google.auth's, without importing it here.
        return (f"no Google Cloud credentials ({message[:200]}): run gcloud auth application-default login, or "
                "set GOOGLE_APPLICATION_CREDENTIALS to a service account key file")
    if isinstance(cause, (ConnectionError, TimeoutError, socket.gaierror, urllib.error.URLError)):
        return (f"a network error ({message}). Model URLs (TF Hub handles, the default --encoder and "
                "--preprocessor) must be reachable from every worker; offline, export a model with model.export "
                "and pass --model_dir")
    return message


def _save_traceback() -> str:
    """Writes the current exception's traceback to a log file; returns its path."""
    import tempfile
    import traceback

    with tempfile.NamedTemporaryFile("w", prefix="pipeline-run-", suffix=".log", delete=False) as log:
        traceback.print_exc(file=log)
    return log.name


def main(argv=None) -> int:
    """The command line: exit 0 done, 1 failed run, 2 usage error, 130 interrupted (see --help)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [arg for arg in argv if arg != "--verbose"]
    _quiet(verbose)
    if not argv or "-h" in argv or "--help" in argv:
        _help_parser().print_help()
        return 0
    if not verbose:
        _import_tensorflow_quietly()
    try:
        run(argv)
    except UsageError as err:
        print(f"error: {err} (see python -m pipeline.run --help)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was committed (no manifest, no MERGE); rerun the same command to start again.",
              file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  Every failure of a run becomes one line; the traceback is kept.
        if verbose:
            import traceback

            traceback.print_exc()
        where = "above" if verbose else f"in {_save_traceback()}"
        print(f"error: the run failed: {_failure_line(err)} (traceback {where})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
