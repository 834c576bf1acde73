"""The options checked and resolved into a Plan, before anything runs: what build() needs, nothing left to infer."""

from __future__ import annotations

# Imports of runtime, transforms, psycopg and the like sit inside the functions that use them: the command line
# answers --help and usage errors before it pays for them (see pipeline/cli.py).
import dataclasses
import logging
import os

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions

from pipeline.options import (
    DEFAULT_ENCODER,
    DEFAULT_PREPROCESSOR,
    LOCAL_RUNNERS,
    EmbeddingOptions,
    parse_field_list,
    parse_pair_fields,
    split_patterns,
)
from runtime.chunking import ChunkSettings
from transforms.limits import SinkLimits
from transforms.sinks import Layout, limits_of

__all__ = ["InputPlan", "ModelPlan", "OutputPlan", "IncrementalPlan", "Plan", "check_flags", "validate"]


@dataclasses.dataclass(frozen=True)
class InputPlan:
    """What to read."""

    patterns: tuple[str, ...]
    input_format: str
    id_field: str
    text_field: str
    pair_fields: tuple[str, str] | None
    estimated_records: int | None  # For progress and the shard count; None when unknown (compressed input).


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """Which models, how they pool, and how they run."""

    encoder: str
    preprocessor: str
    fingerprint: str  # Written as each embedding's `model`.
    seq_length: int
    pooling: str
    normalize: bool
    precision: str
    batch_size: int
    token_budget: int
    large_model: bool
    model_copies: int | None
    settings_note: str  # Where pooling, normalisation and seq_length came from, for the user.
    chunking: ChunkSettings | None = None  # None: one embedding per record (--chunking none).
    prompt: str = ""  # Prepended to every text before tokenizing (--prompt, --prompt_name or the model's default).


@dataclasses.dataclass(frozen=True)
class OutputPlan:
    """Where embeddings and dead letters go ({run_id} filled in)."""

    tfrecord: str | None  # None: BigQuery is the only sink.
    sequence: bool
    failed: str
    bigquery: str | None  # PROJECT:DATASET.TABLE; None: no BigQuery sink.
    bigquery_method: str
    bigquery_table_exists: bool  # Append with the table's own schema; else create it with records.SCHEMA.
    chunk_text: bool = False  # Write each chunk's text (--output_chunk_text).


@dataclasses.dataclass(frozen=True)
class IncrementalPlan:
    """This run's id and the earlier output it updates (docs/incremental.md)."""

    run_id: str
    previous_output: str | None  # An earlier run's prefix ({latest} resolved) or table; None: embed everything.
    previous_files: tuple[str, ...]  # The earlier TFRecord run's shards.
    # --previous_output names a table: read it, and keep the --output_bigquery table current (UpdateTable)
    # instead of appending.
    bigquery_update: bool


@dataclasses.dataclass(frozen=True)
class Plan:
    """Options checked and resolved: everything build() needs."""

    inputs: InputPlan
    model: ModelPlan
    outputs: OutputPlan
    incremental: IncrementalPlan
    max_failed_fraction: float
    max_deleted_fraction: float
    layout: Layout = Layout()  # The records' columns, for every sink.
    sinks: tuple = ()  # transforms.sinks' sinks, each checked: the build loops over them.

    @property
    def limits(self) -> SinkLimits:
        """What the sinks cannot hold, checked for every record as it is read."""
        return limits_of(self.sinks)


def validate(options: PipelineOptions) -> Plan:
    """Checks the options before anything runs; user mistakes raise ValueError naming the flag."""
    from transforms import bigquery

    check_flags(options)
    opts = options.view_as(EmbeddingOptions)
    bigquery_table = _resolve_bigquery(options)
    _check_buckets(options, {
        "--input": split_patterns(opts.input), "--output_tfrecord": [opts.output_tfrecord],
        "--output_failed": [opts.output_failed], "--model_dir": [opts.model_dir], "--encoder": [opts.encoder],
        "--preprocessor": [opts.preprocessor], "--previous_output": [opts.previous_output],
        "--output_parquet": [opts.output_parquet], "--output_vertex": [opts.output_vertex],
        "--temp_location": [options.view_as(GoogleCloudOptions).temp_location
                            if bigquery_table and opts.bigquery_method == "file_loads" else None]})
    inputs = _plan_inputs(opts)
    model = _plan_model(opts, pairs=inputs.pair_fields is not None)
    kept = _plan_kept_fields(opts, inputs)
    table_shape = {"chunks": model.chunking is not None, "kept": kept}
    incremental, outputs = _plan_run(options, bigquery_table, table_shape)
    if bigquery_table and not incremental.bigquery_update:
        outputs = dataclasses.replace(outputs, bigquery_table_exists=bigquery.check_table(
            bigquery_table, options.view_as(GoogleCloudOptions).project, **table_shape))
    layout, typed = _plan_typed_sinks(opts, model, incremental, inputs, kept)
    return Plan(inputs=inputs, model=model, outputs=outputs, incremental=incremental,
                max_failed_fraction=opts.max_failed_fraction, max_deleted_fraction=opts.max_deleted_fraction,
                layout=layout, sinks=_file_and_table_sinks(inputs, outputs, incremental) + typed)


def check_flags(options: PipelineOptions) -> None:
    """The checks that need nothing but the flags (required outputs, secrets); ValueError naming the flag. Cheap:
    the command line runs them before it imports TensorFlow."""
    opts = options.view_as(EmbeddingOptions)
    _check_required(opts)
    _check_no_secret_in_job(opts, options.view_as(StandardOptions).runner)


def _check_required(opts: EmbeddingOptions) -> None:
    if not opts.input:
        raise ValueError("--input is required: a corpus file pattern such as corpus/*.jsonl.")
    others = (opts.output_parquet, opts.output_vertex, opts.output_postgres)
    if not opts.output_tfrecord and not opts.output_bigquery and not any(others):
        raise ValueError("--output_tfrecord or --output_bigquery is required: an output prefix such as "
                         "out/embeddings, or a table such as my-project:my_dataset.embeddings (or --output_parquet, "
                         "--output_vertex, --output_postgres).")
    if not opts.output_tfrecord and not opts.output_failed:
        what = "--output_bigquery is the only output" if not any(others) else "there is no --output_tfrecord"
        raise ValueError(f"--output_failed is required when {what}: a prefix for "
                         "the records that could not be embedded, such as gs://bucket/failed/part.")


def _check_no_secret_in_job(opts: EmbeddingOptions, runner: str | None) -> None:
    """A job sent elsewhere carries its options and its pickled functions: a password in --output_postgres would
    travel in both (Dataflow shows options in its console and keeps the pickles in the staging bucket)."""
    from transforms.sinks.postgres import has_password, mask

    if opts.output_postgres and runner not in LOCAL_RUNNERS and has_password(opts.output_postgres):
        raise ValueError(f"--output_postgres {mask(opts.output_postgres)} holds a password, which would travel in "
                         f"the {runner} job's options and code: leave it out and let the workers' libpq find it "
                         "(PGPASSFILE or PGPASSWORD in the worker image, see templates/README.md), or use IAM "
                         "database authentication.")


def _plan_inputs(opts: EmbeddingOptions) -> InputPlan:
    """The corpus: its files exist, its format, and a sample of it holds the fields asked for."""
    from transforms import preflight, read

    patterns = split_patterns(opts.input)
    read.check_inputs_exist(patterns)
    input_format = opts.input_format or read.infer_format(patterns)
    pair_fields = parse_pair_fields(opts.pair_fields)
    if pair_fields and input_format == "text":
        raise ValueError("--pair_fields needs named fields; --input_format text has none (use jsonl, csv, tsv "
                         "or tfrecord).")
    preflight.check_sample(patterns, input_format, pair_fields or (opts.text_field,))
    return InputPlan(patterns=tuple(patterns), input_format=input_format, id_field=opts.id_field,
                     text_field=opts.text_field, pair_fields=pair_fields,
                     estimated_records=preflight.estimate_records(patterns, input_format))


def _plan_model(opts: EmbeddingOptions, pairs: bool) -> ModelPlan:
    """The model pair, checked; pooling, normalisation and length from the flags or the model; the chunking;
    the fingerprint."""
    import runtime
    from runtime import chunking as chunking_lib
    from transforms.files import BeamFiles

    encoder, preprocessor = _resolve_models(opts)
    runtime.check_models(encoder, preprocessor, files=BeamFiles())
    longest = runtime.model_max_seq_length(preprocessor, files=BeamFiles()) if opts.chunking != "none" else None
    longest = longest or runtime.MAX_SEQ_LENGTH
    prompt = runtime.resolve_prompt(encoder, prompt_name=opts.prompt_name, prompt=opts.prompt, files=BeamFiles())
    prompt_pieces = _check_prompt(opts, prompt.text, preprocessor, pairs)
    chunking = _plan_chunking(opts, encoder, pairs, longest, reserved=prompt_pieces)
    chunking_seq_length = None
    if chunking:
        chunking_seq_length = (chunking.tokens + 2 + prompt_pieces if chunking.mode == "windows" else longest)
        if opts.seq_length is None and chunking_seq_length > longest:
            with_prompt = f", the prompt's {prompt_pieces} wordpieces" if prompt_pieces else ""
            raise ValueError(f"--chunk_tokens {chunking.tokens} plus [CLS]{with_prompt} and [SEP] exceeds the longest "
                             f"input the model takes ({longest} tokens): use --chunk_tokens "
                             f"{longest - 2 - prompt_pieces} or less.")
    settings = runtime.resolve_settings(encoder, pooling=opts.pooling, normalize=opts.normalize,
                                        seq_length=opts.seq_length, chunking_seq_length=chunking_seq_length,
                                        files=BeamFiles())
    runtime.check_seq_length(preprocessor, settings.seq_length, files=BeamFiles())
    described = None
    if chunking:
        if chunking.mode == "late" and settings.pooling != "mean":
            raise ValueError(f"--chunking late pools each chunk's token vectors by their mean: it needs --pooling "
                             f"mean (pooling here is {settings.pooling}); or use --chunking windows.")
        chunking_lib.check_chunking(chunking, settings.seq_length - prompt_pieces)
        described = chunking.describe() + (";chunk_text" if opts.output_chunk_text else "")
    fingerprint = runtime.model_fingerprint(encoder, preprocessor, settings.pooling, settings.normalize,
                                            settings.seq_length, opts.precision, chunking=described,
                                            prompt=prompt.text, files=BeamFiles())
    return ModelPlan(encoder=encoder, preprocessor=preprocessor, fingerprint=fingerprint,
                     seq_length=settings.seq_length, pooling=settings.pooling, normalize=settings.normalize,
                     precision=opts.precision, batch_size=opts.batch_size, token_budget=opts.token_budget,
                     large_model=opts.large_model, model_copies=opts.model_copies,
                     settings_note=f"{settings.note}, {prompt.note}", chunking=chunking, prompt=prompt.text)


def _check_prompt(opts: EmbeddingOptions, prompt: str, preprocessor: str, pairs: bool) -> int:
    """The prompt's wordpieces when chunks must make room for it (0 otherwise); ValueError naming the flags that
    do not go with a prompt."""
    import runtime
    from transforms.files import BeamFiles

    if not prompt:
        return 0
    if pairs:
        raise ValueError("a prompt (--prompt, --prompt_name or the model's default) prefixes single texts; "
                         "--pair_fields embeds pairs: drop one of the two (--prompt '' for none).")
    if opts.chunking == "late":
        raise ValueError("--chunking late pools each chunk from a whole window's token vectors: a prompt before "
                         "every chunk has no place there; use --chunking windows, or --prompt '' for none.")
    if opts.chunking != "windows":
        return 0
    if prompt[-1:].isalnum():
        raise ValueError(f"--chunking windows puts the prompt's wordpieces before every chunk's, which equals "
                         f"tokenizing prompt + chunk only when the prompt ends in a space or punctuation: "
                         f"{prompt!r} does not.")
    return runtime.count_wordpieces(preprocessor, prompt, files=BeamFiles())


def _plan_chunking(opts: EmbeddingOptions, encoder: str, pairs: bool, longest: int,
                   reserved: int = 0) -> ChunkSettings | None:
    """--chunking, --chunk_tokens and --chunk_overlap as ChunkSettings (sizes checked later against the length),
    None for --chunking none; ValueError naming the flags that do not go together. The default chunk fits the
    model's `longest` input, and for windows its sentence-transformers length too, less the `reserved`
    wordpieces of a prompt before every chunk."""
    from runtime import chunking, model_defaults
    from transforms.files import BeamFiles

    if opts.chunking == "none":
        given = [flag for flag, value in (("--chunk_tokens", opts.chunk_tokens is not None),
                                          ("--chunk_overlap", opts.chunk_overlap is not None),
                                          ("--output_chunk_text", opts.output_chunk_text)) if value]
        if given:
            raise ValueError(f"{given[0]} needs --chunking windows or late (--chunking is none).")
        return None
    if pairs:
        raise ValueError(f"--chunking {opts.chunking} cuts single texts and --pair_fields embeds pairs, which are "
                         "never chunked: drop one of the two.")
    if opts.output_sequence:
        raise ValueError(f"--output_sequence writes each record's token vectors and --chunking {opts.chunking} "
                         "writes chunks: drop one of the two.")
    tokens = opts.chunk_tokens
    if tokens is None:
        own_length = model_defaults(encoder, files=BeamFiles()).get("max_seq_length")
        tokens = chunking.default_chunk_tokens(min(own_length or longest, longest) - reserved
                                               if opts.chunking == "windows" else longest)
    overlap = opts.chunk_overlap
    if overlap is None:
        overlap = min(chunking.DEFAULT_CHUNK_OVERLAP, tokens // 8)
    return ChunkSettings(opts.chunking, tokens, overlap)



def _plan_run(options: PipelineOptions, bigquery_table, table_shape: dict) -> tuple[IncrementalPlan, OutputPlan]:
    """The run id, its outputs and the earlier output it updates: a TFRecord prefix or a BigQuery table (of
    `table_shape`: bigquery.check_table's chunks and kept)."""
    from transforms import bigquery, incremental

    opts = options.view_as(EmbeddingOptions)
    previous_is_table = bool(opts.previous_output) and bigquery.is_table_spec(opts.previous_output)
    paths = incremental.resolve_run(opts.run_id, opts.output_tfrecord, opts.output_failed,
                                    None if previous_is_table else opts.previous_output)
    _check_writable({"--output_tfrecord": paths.output_tfrecord, "--output_failed": paths.output_failed})
    previous_output = paths.previous_output
    if previous_is_table:
        previous_output = _resolve_previous_table(options, bigquery_table, table_shape)
    outputs = OutputPlan(tfrecord=paths.output_tfrecord, sequence=opts.output_sequence, failed=paths.output_failed,
                         bigquery=bigquery_table.spec if bigquery_table else None,
                         bigquery_method=opts.bigquery_method, bigquery_table_exists=False,
                         chunk_text=opts.output_chunk_text)
    return IncrementalPlan(run_id=paths.run_id, previous_output=previous_output, previous_files=paths.previous_files,
                           bigquery_update=previous_is_table), outputs


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


def _resolve_previous_table(options: PipelineOptions, output_table, table_shape: dict) -> str | None:
    """--previous_output naming a BigQuery table, cross-checked: the table to read, or None when there is none yet."""
    from transforms import bigquery

    opts = options.view_as(EmbeddingOptions)
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
    exists = bigquery.check_previous_table(previous, output_table, options.view_as(GoogleCloudOptions).project,
                                           **table_shape)
    if not exists:
        logging.info("--previous_output %s does not exist yet; embedding everything.", previous.spec)
    return previous.spec if exists else None


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


def _plan_kept_fields(opts: EmbeddingOptions, inputs: InputPlan) -> tuple:
    """--keep_fields as records.Columns, typed from the input's first records."""
    from transforms import preflight

    names = parse_field_list(opts.keep_fields, "--keep_fields")
    return tuple(preflight.kept_columns(list(inputs.patterns), inputs.input_format, names))


def _file_and_table_sinks(inputs: InputPlan, outputs: OutputPlan, incremental: IncrementalPlan) -> tuple:
    """The TFRecord and BigQuery sinks the outputs name (checked by _plan_run and validate)."""
    from transforms.sinks.bigquery import BigQuerySink
    from transforms.sinks.tfrecord import TFRecordSink

    sinks = (TFRecordSink(outputs.tfrecord, inputs.estimated_records),) if outputs.tfrecord else ()
    if outputs.bigquery:
        sinks += (BigQuerySink(outputs.bigquery, outputs.bigquery_method, outputs.bigquery_table_exists,
                               update=incremental.bigquery_update, failed=outputs.failed),)
    return sinks


def _plan_typed_sinks(opts: EmbeddingOptions, model: ModelPlan, incremental: IncrementalPlan, inputs: InputPlan,
                      keep_fields: tuple) -> tuple[Layout, tuple]:
    """The records' layout and the typed sinks, checked: flags that go together, the Vertex fields among the kept
    ones, the PostgreSQL table (created or checked) before anything runs."""
    import runtime
    from transforms.files import BeamFiles
    from transforms.sinks.parquet import ParquetSink
    from transforms.sinks.postgres import PostgresSink
    from transforms.sinks.vertex import VertexSink
    from transforms.write import shard_count

    restricts, numeric = _check_vertex_fields(opts, keep_fields)
    if bool(opts.output_postgres) != bool(opts.postgres_table):
        raise ValueError("--output_postgres and --postgres_table go together: the database URI and the table to "
                         "upsert into.")
    if opts.postgres_index and not opts.output_postgres:
        raise ValueError(f"--postgres_index {opts.postgres_index} needs --output_postgres.")
    run_id = incremental.run_id
    parquet, vertex = (path.replace("{run_id}", run_id) if path else None
                       for path in (opts.output_parquet, opts.output_vertex))
    _check_writable({"--output_parquet": parquet, "--output_vertex": vertex and vertex.rstrip("/") + "/x"})
    dimension = None
    if parquet or vertex or opts.output_postgres:
        dimension = runtime.embedding_dimension(model.encoder, files=BeamFiles())
    layout = Layout(kept=keep_fields, chunks=model.chunking is not None, dimension=dimension)
    shards = shard_count(inputs.estimated_records)
    sinks = (ParquetSink(parquet, shards),) if parquet else ()
    if vertex:
        sinks += (VertexSink(vertex, restricts, numeric, opts.vertex_crowding_tag or None, shards),)
    if opts.output_postgres:
        postgres = PostgresSink(opts.output_postgres, opts.postgres_table, opts.postgres_index)
        postgres.check(layout)
        sinks += (postgres,)
    return layout, sinks


def _check_vertex_fields(opts: EmbeddingOptions, keep_fields: tuple) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """--vertex_restricts and --vertex_numeric_restricts, each among the kept fields, numbers numeric."""
    types = {column.name: column.type for column in keep_fields}
    restricts = parse_field_list(opts.vertex_restricts, "--vertex_restricts")
    numeric = parse_field_list(opts.vertex_numeric_restricts, "--vertex_numeric_restricts")
    for flag, fields in (("--vertex_restricts", restricts), ("--vertex_numeric_restricts", numeric),
                         ("--vertex_crowding_tag", (opts.vertex_crowding_tag,) if opts.vertex_crowding_tag else ())):
        if fields and not opts.output_vertex:
            raise ValueError(f"{flag} needs --output_vertex.")
        missing = [name for name in fields if name not in types]
        if missing:
            raise ValueError(f"{flag} {','.join(fields)}: {', '.join(missing)} is not among --keep_fields "
                             f"({opts.keep_fields or 'none'}); keep the field too.")
    not_numeric = [f"{name} ({types[name]})" for name in numeric if types[name] not in ("int64", "float64")]
    if not_numeric:
        raise ValueError(f"--vertex_numeric_restricts {','.join(numeric)}: {', '.join(not_numeric)} is not a number "
                         "in the input's first records.")
    return restricts, numeric
