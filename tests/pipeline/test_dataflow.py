"""The Dataflow path offline: DataflowRunner --dry_run=True translates the pipeline without submitting a job.

A pickling, translation or packaging error shows up here instead of on the service. Inputs and models are local
(the dry run reads them only to validate and fingerprint); outputs are gs:// paths nothing writes to, and
BigQuery tables that nothing looks up.
"""

import json
import tarfile

import pytest
import tensorflow as tf
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.internal import apiclient

import runtime
from pipeline import cli
from pipeline import run as run_lib
from transforms import bigquery
from transforms.records import content_hash

GPU_SERVICE_OPTION = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
IMAGE = "us-central1-docker.pkg.dev/PROJECT/REPOSITORY/embed-corpus:TAG"


# No Google endpoint is reached: tests/conftest.py's offline_gcp fakes credentials and finds every bucket.
pytestmark = pytest.mark.usefixtures("offline_gcp")


def dataflow_args(*extra):
    return ["--runner=DataflowRunner", "--dry_run=True", "--project=test-project", "--region=us-central1",
            "--temp_location=gs://test-bucket/tmp", "--run_id=2026-11-24T00-00-00",
            "--output_tfrecord=gs://test-bucket/emb/run={run_id}/part", *extra]


def job_of(result):
    """The dry run's job, and the environment Dataflow would be asked to create for it."""
    job = result.job
    environment = apiclient.Environment(packages=[], options=job.options, environment_version="dry-run",
                                        proto_pipeline_staged_url="gs://test-bucket/staging/pipeline.pb",
                                        proto_pipeline=job.proto_pipeline).proto
    return job, environment


def transform_names(job) -> set:
    return {t.unique_name for t in job.proto_pipeline.components.transforms.values()}


def docker_environments(job) -> list:
    environments = []
    for environment in job.proto_pipeline.components.environments.values():
        assert environment.urn == "beam:env:docker:v1"
        environments.append(beam_runner_api_pb2.DockerPayload.FromString(environment.payload))
    return environments


def staged_files(job) -> dict:
    """{staged name: local path} of the artifacts the job would upload."""
    staged = {}
    for environment in job.proto_pipeline.components.environments.values():
        for artifact in environment.dependencies:
            path = beam_runner_api_pb2.ArtifactFilePayload.FromString(artifact.type_payload).path
            name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(artifact.role_payload).staged_name
            staged[name] = path
    return staged


def test_text_corpus_to_tfrecord_translates_and_stages_the_package(tmp_path, tiny_model_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat\nHello World\n")
    result = run_lib.run(dataflow_args(f"--input={corpus}", f"--model_dir={tiny_model_dir}",
                                       "--setup_file=./setup.py"))
    assert result.state == "DONE"
    job, environment = job_of(result)
    names = transform_names(job)
    for label in ("ReadCorpus", "KeyByRecord", "Embed/RunInference", "WriteTFRecord/ToExample",
                  "WriteTFRecord/Write", "WriteManifest", "WriteFailures"):
        assert label in names
    assert not any(name.startswith(("ReadPrevious", "SelectChanged")) for name in names)
    # The run id went into the output path, and the job takes its workers' code from the staged package.
    assert "gs://test-bucket/emb/run=2026-11-24T00-00-00/part" in str(job.proto_pipeline)
    with tarfile.open(staged_files(job)["workflow.tar.gz"]) as sdist:
        modules = {name.split("/", 1)[1] for name in sdist.getnames() if name.endswith(".py")}
    for module in ("model/export.py", "runtime/engine.py", "transforms/embed.py", "transforms/incremental.py",
                   "pipeline/run.py", "pipeline/options.py", "setup.py"):
        assert module in modules
    assert environment.sdk_pipeline_options["options"]["setup_file"] == "./setup.py"


def test_pair_corpus_incremental_run_translates_on_the_template_image(tmp_path, tiny_model_dir):
    corpus = tmp_path / "pairs.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"p{i}", "a": "the cat sat", "b": f"a dog ran {i}"}) + "\n"
                              for i in range(3)))
    previous = tmp_path / "previous" / "part"
    previous.parent.mkdir()
    with tf.io.TFRecordWriter(str(previous) + "-00000-of-00001.tfrecord") as writer:
        example = tf.train.Example()
        for name, value in (("id", "p0"), ("content_hash", content_hash(("x", "y"))), ("model", "0" * 16)):
            example.features.feature[name].bytes_list.value.append(value.encode())
        writer.write(example.SerializeToString())
    result = run_lib.run(dataflow_args(f"--input={corpus}", f"--model_dir={tiny_model_dir}", "--pair_fields=a,b",
                                       f"--previous_output={previous}", f"--sdk_container_image={IMAGE}"))
    job, environment = job_of(result)
    names = transform_names(job)
    for label in ("ReadPrevious", "SelectChanged/JoinById", "SelectChanged/Classify",
                  "WriteTFRecord/WithCarriedForward", "WriteManifest"):
        assert label in names
    assert [payload.container_image for payload in docker_environments(job)] == [IMAGE]
    assert "workflow.tar.gz" not in staged_files(job)  # The image has the code; nothing to install on workers.


def test_chunked_incremental_run_translates(tmp_path, tiny_model_dir):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(json.dumps({"id": "d0", "text": "the cat sat on the mat " * 40}) + "\n")
    previous = tmp_path / "previous" / "part"
    previous.parent.mkdir()
    with tf.io.TFRecordWriter(str(previous) + "-00000-of-00001.tfrecord") as writer:
        example = tf.train.Example()
        for name, value in (("id", "d0#0"), ("doc_id", "d0"), ("content_hash", content_hash(("x",))),
                            ("model", "0" * 16)):
            example.features.feature[name].bytes_list.value.append(value.encode())
        writer.write(example.SerializeToString())
    result = run_lib.run(dataflow_args(f"--input={corpus}", f"--model_dir={tiny_model_dir}", "--chunking=late",
                                       "--pooling=mean", "--chunk_tokens=32", "--output_chunk_text",
                                       f"--previous_output={previous}", f"--sdk_container_image={IMAGE}"))
    names = transform_names(job_of(result)[0])
    for label in ("Embed/RunInference", "OneRecordPerChunk", "SelectChanged/Classify", "PreviousDocuments",
                  "WriteTFRecord/WithCarriedForward", "WriteManifest"):
        assert label in names


def test_gpu_options_reach_the_job_request(tmp_path, tiny_model_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat\n")
    result = run_lib.run(dataflow_args(
        f"--input={corpus}", f"--model_dir={tiny_model_dir}", f"--sdk_container_image={IMAGE}",
        f"--dataflow_service_options={GPU_SERVICE_OPTION}", "--machine_type=g2-standard-4",
        "--large_model", "--batch_size=256", "--token_budget=32768"))
    _, environment = job_of(result)
    assert GPU_SERVICE_OPTION in environment.service_options
    assert [pool.machine_type for pool in environment.worker_pools] == ["g2-standard-4"]


@pytest.mark.parametrize("table_exists", [False, True])
def test_tfrecord_and_bigquery_sinks_translate_with_an_incremental_run(
        table_exists, tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(bigquery, "check_table", lambda table, billing_project=None, **shape: table_exists)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": f"the cat sat {i}"}) + "\n" for i in range(3)))
    previous = tmp_path / "previous" / "part"
    previous.parent.mkdir()
    (tmp_path / "previous" / "part-00000-of-00001.tfrecord").write_bytes(b"")
    result = run_lib.run(dataflow_args(
        f"--input={corpus}", f"--model_dir={tiny_model_dir}", "--output_bigquery=test-project:embeddings.docs",
        f"--previous_output={previous}", f"--sdk_container_image={IMAGE}"))
    job, _ = job_of(result)
    names = transform_names(job)
    # Appending by load jobs goes through a run table and a MERGE that adds only what the table lacks.
    for label in ("SelectChanged/Classify", "WriteTFRecord/Write", "WriteManifest", "WriteBigQuery/ToRow",
                  "WriteBigQuery/WriteRunTable", "WriteBigQuery/MergeIntoTable"):
        assert label in names
    assert any(name.startswith("WriteBigQuery/WriteRunTable/BigQueryBatchFileLoads") for name in names)


def test_bigquery_as_the_only_sink_translates_with_streaming_inserts(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(bigquery, "check_table", lambda table, billing_project=None, **shape: False)
    corpus = tmp_path / "pairs.jsonl"
    corpus.write_text(json.dumps({"id": "p", "a": "the cat", "b": "a dog"}) + "\n")
    args = [arg for arg in dataflow_args() if not arg.startswith("--output_tfrecord")]
    result = run_lib.run(args + [f"--input={corpus}", f"--model_dir={tiny_model_dir}", "--pair_fields=a,b",
                                 "--output_bigquery=test-project.embeddings.pairs", "--bigquery_method=streaming",
                                 "--output_failed=gs://test-bucket/failed/run={run_id}/part"])
    names = transform_names(result.job)
    assert "WriteBigQuery/FailedRowToFailure" in names and "WriteFailures" in names
    assert not any(name.startswith(("WriteTFRecord", "WriteManifest")) for name in names)
    assert "gs://test-bucket/failed/run=2026-11-24T00-00-00/part" in str(result.job.proto_pipeline)


class _FakeGpu:
    def __init__(self, name):
        self.name = name


def test_gpu_memory_growth_is_set_for_every_visible_gpu(monkeypatch):
    calls = []

    def set_memory_growth(device, enabled):
        calls.append((device.name, enabled))
        if device.name.endswith(":1"):
            raise RuntimeError("Physical devices cannot be modified after being initialized")

    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind: [_FakeGpu("/physical_device:GPU:0"), _FakeGpu("/physical_device:GPU:1")]
                        if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", set_memory_growth)
    runtime.allow_gpu_memory_growth()  # An already-initialised GPU is left as it is, not an error.
    assert calls == [("/physical_device:GPU:0", True), ("/physical_device:GPU:1", True)]


def test_a_postgres_password_never_travels_in_a_dataflow_job(tmp_path, tiny_model_dir, postgres_uri, monkeypatch,
                                                             capsys, one_error_line):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "a", "text": "the cat sat"}\n')
    common = [f"--input={corpus}", f"--model_dir={tiny_model_dir}", "--postgres_table=emb_dataflow"]
    socket = postgres_uri.split("host=", 1)[1]
    for conninfo in (f"postgresql://postgres:hunter2@/postgres?host={socket}",
                     f"host={socket} user=postgres password='hunter 2' dbname=postgres"):
        assert cli.main(dataflow_args(*common, f"--output_postgres={conninfo}")) == 2
        line = one_error_line(capsys.readouterr().err.strip().splitlines(), "--output_postgres",
                              "holds a password", "PGPASSFILE")
        assert "hunter" not in line
    # The workers' libpq finds the password itself (here the launcher's PGPASSWORD, which the server ignores).
    monkeypatch.setenv("PGPASSWORD", "canary-hunter2")
    result = run_lib.run(dataflow_args(*common, f"--output_postgres=postgresql://postgres@/postgres?host={socket}"))
    job, environment = job_of(result)
    assert b"canary-hunter2" not in job.proto_pipeline.SerializeToString()
    assert "canary-hunter2" not in json.dumps(environment.sdk_pipeline_options, default=str)
