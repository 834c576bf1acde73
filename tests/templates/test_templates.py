"""templates/: metadata.json in step with the options, the Flex Template entry point, the image and the schedule."""

import importlib.util
import json
import pathlib
import re
import sys

import apache_beam
import pytest
from apache_beam.runners.dataflow import dataflow_runner
from google.cloud.dataflow_v1beta3.types import templates as dataflow_templates

from pipeline import run as run_lib
from pipeline.options import option_actions
from transforms import bigquery, incremental

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"


def _load(name: str):
    """Imports templates/NAME.py by path: templates/ is not an installed package."""
    spec = importlib.util.spec_from_file_location(f"templates_{name}", TEMPLATES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate_metadata = _load("generate_metadata")
template_main = _load("main")


def _option_actions():
    return {action.dest: action for action in option_actions()}


def _metadata() -> dict:
    return json.loads((TEMPLATES / "metadata.json").read_text(encoding="utf-8"))


def test_checked_in_metadata_is_what_the_generator_writes():
    assert (TEMPLATES / "metadata.json").read_text(encoding="utf-8") == generate_metadata.render(), (
        "templates/metadata.json is out of date: run python -m templates.generate_metadata")
    assert generate_metadata.main(["--check"]) == 0


def test_metadata_is_a_valid_template_metadata_message_with_every_option():
    text = (TEMPLATES / "metadata.json").read_text(encoding="utf-8")
    message = dataflow_templates.TemplateMetadata.from_json(text)  # Unknown or mistyped fields raise.
    assert message.name and message.description
    parameters = _metadata()["parameters"]
    actions = _option_actions()
    assert [p["name"] for p in parameters] == list(actions)
    for parameter in parameters:
        assert parameter["label"] and parameter["helpText"]
        assert " ".join(actions[parameter["name"]].help.split()) in parameter["helpText"]
        for regex in parameter.get("regexes", []):
            re.compile(regex)
    assert {p["name"] for p in parameters if not p["isOptional"]} == set(generate_metadata.REQUIRED)
    assert set(generate_metadata.PATTERNS) <= set(actions), "a regex for an option that no longer exists"


def _matches(parameter_name: str, value: str) -> bool:
    parameter = next(p for p in _metadata()["parameters"] if p["name"] == parameter_name)
    return all(re.fullmatch(regex, value) for regex in parameter.get("regexes", []))


@pytest.mark.parametrize("name,good,bad", [
    ("input", ["gs://b/corpus/*.jsonl", "gs://b/a/*.txt, gs://b/b/*.txt"], ["corpus/*.jsonl", "gs://b/a,"]),
    ("input_format", ["jsonl", "tfrecord"], ["xml", "JSONL"]),
    ("seq_length", ["128", "7"], ["0", "-1", "1.5", "x"]),
    ("normalize", ["true", "false"], ["yes", "1", ""]),
    ("pair_fields", ["premise,hypothesis"], ["premise", "a,b,c"]),
    ("model_dir", ["gs://b/models/distilbert"], ["/local/models", "https://tfhub.dev/x"]),
    ("run_id", ["2026-11-24T02-00-00", "nightly.3"], ["a/b", "-x", "{run_id}"]),
    ("previous_output", ["gs://b/emb/run={latest}/part"], ["emb/part"]),
    ("output_bigquery", ["my-project:emb.docs", "my-project.emb.docs", "example.com:proj:emb.docs"],
     ["emb.docs", "My_Project:emb.docs"]),
])
def test_metadata_regexes_accept_the_documented_formats(name, good, bad):
    for value in good:
        assert _matches(name, value), value
    for value in bad:
        assert not _matches(name, value), value


def test_run_id_and_table_regexes_agree_with_the_pipeline():
    for value in ("2026-11-24T02-00-00", "nightly.3", "a/b", "-x", "a b"):
        assert _matches("run_id", value) == bool(incremental.RUN_ID_PATTERN.fullmatch(value)), value
    for value in ("my-project:emb.docs", "my-project.emb.docs", "example.com:proj:emb.docs", "emb.docs", "P:e.t"):
        try:
            bigquery.parse_table(value)
            parsed = True
        except ValueError:
            parsed = False
        assert _matches("output_bigquery", value) == parsed, value


def test_template_flags_become_command_line_flags():
    args = template_main.to_pipeline_args(["--normalize=true", "--large_model=false", "--output_sequence=TRUE",
                                           "--pooling=mean", "--input=gs://b/c.txt"])
    assert args == ["--normalize", "--output_sequence", "--pooling=mean", "--input=gs://b/c.txt",
                    "--runner=DataflowRunner"]
    assert template_main.to_pipeline_args(["--runner=DirectRunner"]) == ["--runner=DirectRunner"]
    with pytest.raises(ValueError, match="--normalize"):
        template_main.to_pipeline_args(["--normalize=yes"])


def test_entry_point_builds_the_same_graph_as_the_command_line_and_does_not_wait(
        tmp_path, tiny_model_dir, offline_gcp, monkeypatch):
    plans, jobs = [], []
    validate, run_pipeline = run_lib.validate, dataflow_runner.DataflowRunner.run_pipeline

    def recording_validate(options):
        plans.append(validate(options))
        return plans[-1]

    def never_waited(self, pipeline, options, pipeline_proto=None):
        result = run_pipeline(self, pipeline, options, pipeline_proto)
        jobs.append(result.job)

        def wait_until_finish(duration=None):
            raise AssertionError("the Flex Template entry point waited for the job")
        result.wait_until_finish = wait_until_finish
        return result

    monkeypatch.setattr(run_lib, "validate", recording_validate)
    monkeypatch.setattr(dataflow_runner.DataflowRunner, "run_pipeline", never_waited)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "the cat sat"}) + "\n")
    # What the launcher adds beside the template's parameters.
    launcher = ["--project=test-project", "--region=us-central1", "--temp_location=gs://test-bucket/tmp",
                "--job_name=embed-corpus", "--dry_run=True"]
    common = [f"--input={corpus}", f"--model_dir={tiny_model_dir}", "--pooling=mean", "--run_id=r1",
              "--output_tfrecord=gs://test-bucket/emb/run={run_id}/part"]
    template_main.launch(common + ["--normalize=true", "--large_model=false"] + launcher)
    run_lib.run(common + ["--normalize", "--runner=DataflowRunner"] + launcher)
    assert plans[0] == plans[1] and plans[0].model.normalize and not plans[0].model.large_model
    assert jobs[0].options.view_as(apache_beam.options.pipeline_options.StandardOptions).runner == "DataflowRunner"
    transforms = [sorted(t.unique_name for t in job.proto_pipeline.components.transforms.values()) for job in jobs]
    assert transforms[0] == transforms[1]


def test_entry_point_refuses_to_let_workers_download_models(caplog):
    assert template_main.main(["--input=gs://b/c.txt", "--output_tfrecord=gs://b/o"]) == 2
    assert "model_dir=gs://" in caplog.text


def _dockerfile() -> str:
    return (TEMPLATES / "Dockerfile").read_text(encoding="utf-8")


def test_dockerfile_pins_its_bases_and_matches_setup_py():
    text = _dockerfile()
    images = dict(re.findall(r"^ARG (\w+_(?:BASE|IMAGE))=(\S+)$", text, re.M))
    assert set(images) == {"LAUNCHER_BASE", "BEAM_SDK_IMAGE"}
    for image in images.values():
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", image
    assert "python311-template-launcher-base" in images["LAUNCHER_BASE"]
    beam_pin = re.search(r'"apache-beam\[gcp\]==([^"]+)"', (ROOT / "setup.py").read_text()).group(1)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert images["BEAM_SDK_IMAGE"] == f"apache/beam_python{python}_sdk:{beam_pin}"
    assert beam_pin == apache_beam.__version__
    assert "COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam" in text
    assert "--constraint constraints.txt" in text and "pip check" in text
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text


def test_dockerfile_points_the_launcher_at_files_it_copies_and_explains_each_step():
    text = _dockerfile()
    env = dict(re.findall(r"^ENV (FLEX_TEMPLATE_PYTHON_\w+)=\$\{WORKDIR\}/(\S+)$", text, re.M))
    assert env == {"FLEX_TEMPLATE_PYTHON_PY_FILE": "templates/main.py", "FLEX_TEMPLATE_PYTHON_SETUP_FILE": "setup.py"}
    copied = re.findall(r"^COPY (?!--from)(.+)$", text, re.M)
    for path in env.values():
        assert (ROOT / path).is_file()
        assert any(path in line for line in copied), path
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"(FROM|RUN|COPY|ENV|ENTRYPOINT|ARG) ", line) and not lines[i - 1].startswith(("#", "ARG",
                                                                                                     "ENV", "COPY")):
            pytest.fail(f"Dockerfile line {i + 1} starts a block without a comment saying why: {line}")


def test_scheduled_launch_request_is_valid_and_uses_declared_parameters():
    text = (TEMPLATES / "scheduler" / "launch-request.json").read_text(encoding="utf-8")
    request = dataflow_templates.LaunchFlexTemplateRequest.from_json(text)  # Unknown fields raise.
    launch = request.launch_parameter
    assert launch.container_spec_gcs_path.startswith("gs://BUCKET/")
    declared = {p["name"] for p in _metadata()["parameters"]}
    assert set(launch.parameters) <= declared
    for name, value in launch.parameters.items():
        assert _matches(name, value), (name, value)
    assert "{run_id}" in launch.parameters["output_tfrecord"] and "{latest}" in launch.parameters["previous_output"]
    assert launch.environment.sdk_container_image and launch.environment.temp_location.startswith("gs://")
    assert "flexTemplates:launch" in (TEMPLATES / "scheduler" / "create-job.sh").read_text()
