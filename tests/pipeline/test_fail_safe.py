"""A user's first mistakes cost one clear line and nothing else: refused runs commit nothing, exit codes tell
usage from failure, the model's own pooling is the default."""

import json
import logging
import os

import numpy as np
import pytest

from pipeline import cli
from pipeline import run as run_lib
from transforms import guard


def _corpus(tmp_path, records, name="corpus.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def _texts(n, synthetic_text, start=0):
    return [{"id": f"d{i}", "text": synthetic_text(i)} for i in range(start, start + n)]


def _main(capsys, *argv):
    """Runs the command line; returns its exit code and what it printed to stderr, as lines."""
    code = cli.main(["--runner=FnApiRunner", *argv])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("write,argv,fragments", [
    (lambda p: p.write_text(json.dumps({"id": 1, "text": "the cat"}) + "\n"), ["--text_field=body"],
     ["--text_field body", "id, text"]),
    (lambda p: p.write_text(json.dumps({"id": 1, "text": "the cat"}) + "\n"), ["--input_format=csv"],
     ["looks like JSON Lines", "--input_format jsonl"]),
    (lambda p: p.write_text(""), [], ["hold no records"]),
    (lambda p: p.write_bytes(bytes(range(256)) * 8), [], ["JSON object", "--input_format"]),
])
def test_input_that_cannot_work_is_refused_before_the_pipeline_starts(write, argv, fragments, tmp_path,
                                                                     tiny_model_dir, capsys, one_error_line):
    corpus = tmp_path / "corpus.jsonl"
    write(corpus)
    out = tmp_path / "out" / "emb"
    code, lines = _main(capsys, f"--input={corpus}", f"--model_dir={tiny_model_dir}", f"--output_tfrecord={out}",
                        *argv)
    assert code == 2
    one_error_line(lines, *fragments)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_a_csv_without_a_header_names_the_columns_it_found(tmp_path, tiny_model_dir, capsys, one_error_line):
    corpus = tmp_path / "corpus.csv"
    corpus.write_text("1,the cat sat\n2,a dog ran\n")
    code, lines = _main(capsys, f"--input={corpus}", f"--model_dir={tiny_model_dir}",
                        f"--output_tfrecord={tmp_path / 'o'}")
    assert code == 2
    one_error_line(lines, "--text_field text", "1, the cat sat", "header")


def test_too_many_failures_fail_the_run_with_reasons_and_leave_the_earlier_output(
        tmp_path, tiny_model_dir, synthetic_text, capsys, one_error_line):
    records = _texts(6, synthetic_text) + [{"id": f"bad{i}", "text": ""} for i in range(3)]
    corpus = _corpus(tmp_path, records)
    prefix = str(tmp_path / "out" / "emb")
    code, lines = _main(capsys, f"--input={corpus}", f"--model_dir={tiny_model_dir}", f"--output_tfrecord={prefix}",
                        "--max_failed_fraction=0.5")
    assert code == 0, lines
    earlier = {name: (tmp_path / "out" / name).read_bytes() for name in os.listdir(tmp_path / "out")
               if name.endswith((".tfrecord", "manifest.json"))}
    assert len(earlier) == 2
    os.remove(prefix + "-failed-00000-of-00001.jsonl")

    code, lines = _main(capsys, f"--input={corpus}", f"--model_dir={tiny_model_dir}", f"--output_tfrecord={prefix}")
    assert code == 1
    one_error_line(lines, "3 of 9 records failed", "--max_failed_fraction 0.1", "empty_text 3", '"id": "bad0"',
                    prefix + "-failed-*.jsonl")
    now = {name: (tmp_path / "out" / name).read_bytes() for name in os.listdir(tmp_path / "out")
           if name.endswith((".tfrecord", "manifest.json"))}
    assert now == earlier  # The refused run renamed no shard into place and removed none.
    dead_letters = [json.loads(line) for name in os.listdir(tmp_path / "out") if name.endswith(".jsonl")
                    for line in open(tmp_path / "out" / name)]
    assert sorted(d["reason"] for d in dead_letters) == ["empty_text"] * 3  # Written all the same.


def test_a_run_that_embeds_nothing_fails_even_when_the_sample_looks_right(tmp_path, tiny_model_dir, capsys,
                                                                          one_error_line):
    # The text field exists, so the pre-flight sample passes; every text is blank, so nothing is embedded.
    corpus = _corpus(tmp_path, [{"id": f"d{i}", "text": " "} for i in range(4)])
    prefix = str(tmp_path / "out" / "emb")
    code, lines = _main(capsys, f"--input={corpus}", f"--model_dir={tiny_model_dir}", f"--output_tfrecord={prefix}",
                        "--max_failed_fraction=1")
    assert code == 1
    one_error_line(lines, "no record was embedded")
    assert not os.path.exists(prefix + "-manifest.json")


def test_an_incremental_run_that_would_delete_most_of_the_corpus_is_refused(tmp_path, tiny_model_dir,
                                                                            synthetic_text, capsys, one_error_line):
    root = tmp_path / "emb"
    common = [f"--model_dir={tiny_model_dir}", f"--output_tfrecord={root}/run={{run_id}}/part",
              f"--previous_output={root}/run={{latest}}/part"]
    code, _ = _main(capsys, f"--input={_corpus(tmp_path, _texts(10, synthetic_text))}", "--run_id=r1", *common)
    assert code == 0
    shrunk = _corpus(tmp_path, _texts(3, synthetic_text), name="shrunk.jsonl")
    code, lines = _main(capsys, f"--input={shrunk}", "--run_id=r2", *common)
    assert code == 1
    one_error_line(lines, "delete 7 of the 10", "--max_deleted_fraction 1")
    assert not (root / "run=r2" / "part-manifest.json").exists()
    from transforms import incremental

    assert incremental.resolve_previous(f"{root}/run={{latest}}/part", "r3") == f"{root}/run=r1/part"
    code, lines = _main(capsys, f"--input={shrunk}", "--run_id=r2", "--max_deleted_fraction=1", *common)
    assert code == 0, lines
    assert (root / "run=r2" / "part-manifest.json").exists()


def test_check_run_counts_empty_parts_as_zero_without_a_default_per_count():
    """Every part may be empty (no failures, no earlier run): its count is 0, its reasons {}. The defaults come
    from the side inputs, not from a Create + FlatMap per combine, which made a quarter of a run's graph and cost
    half a second of its start to build and translate."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.records import make_failure

    pipeline = beam.Pipeline(runner="FnApiRunner")
    parts = {"parsed": pipeline | "Parsed" >> beam.Create(["a", "b", "c"]),
             "read_failures": pipeline | "ReadFailures" >> beam.Create([]),
             "embedded": pipeline | "Embedded" >> beam.Create(["a", "b"]),
             "failures": pipeline | "Failures" >> beam.Create([make_failure("f.jsonl", "bad_json", "", "{y"),
                                                               make_failure("f.jsonl", "empty_text", "", ""),
                                                               make_failure("f.jsonl", "bad_json", "", "{x")])}
    tally = parts | guard.CheckRun(1.0, 0.5, "failed-*")
    expected = guard.Tally(records=3, failed=3, reasons={"bad_json": (2, "{x"), "empty_text": (1, "")}, embedded=2,
                           carried=0, previous=0, deleted=0)
    assert_that(tally, equal_to([expected]))
    graph = pipeline.to_runner_api().components.transforms.values()
    assert not [t.unique_name for t in graph if "InjectDefault" in t.unique_name]
    pipeline.run().wait_until_finish()


def test_decide_counts_carried_records_as_done_and_guards_deletions():
    ok = guard.Tally(records=10, failed=0, reasons={}, embedded=0, carried=10, previous=10, deleted=0)
    assert guard.decide(ok, 0.1, 0.5, "f") == ok
    with pytest.raises(guard.RunRefused, match="delete 6 of the 10"):
        guard.decide(ok._replace(deleted=6), 0.1, 0.5, "f")
    assert guard.decide(ok._replace(deleted=6), 0.1, 1.0, "f")
    with pytest.raises(guard.RunRefused, match="held no records"):
        guard.decide(ok._replace(records=0, carried=0), 0.1, 0.5, "f")


@pytest.mark.parametrize("argv,fragments", [
    (["--normalise"], ["Unknown flag --normalise", "did you mean --normalize?"]),
    (["--max_failed_fractoin=0.2"], ["did you mean --max_failed_fraction?"]),
    (["--seq_length=abc"], ["--seq_length", "must be an integer between 2 and 512, not 'abc'"]),
    (["--seq_length=0"], ["--seq_length", "must be an integer between 2 and 512, not '0'"]),
    (["--seq_length=100000"], ["--seq_length", "must be an integer between 2 and 512, not '100000'"]),
    (["--max_failed_fraction=2"], ["--max_failed_fraction", "between 0.0 and 1.0"]),
    (["--pooling=max"], ["--pooling", "invalid choice"]),
    (["stray"], ["Unexpected argument 'stray'"]),
])
def test_usage_errors_are_one_line_with_exit_code_2(argv, fragments, tmp_path, tiny_model_dir, capsys, one_error_line):
    corpus = _corpus(tmp_path, [{"id": 1, "text": "the cat"}])
    code, lines = _main(capsys, f"--input={corpus}", f"--model_dir={tiny_model_dir}",
                        f"--output_tfrecord={tmp_path / 'o'}", *argv)
    assert code == 2
    line = one_error_line(lines, *fragments)
    assert "--help" in line and "usage:" not in "\n".join(lines)


def test_beam_options_still_pass_the_unknown_flag_check():
    run_lib.check_argv(["--input=x", "--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b",
                        "--direct_num_workers=2", "--experiments=a", "--experiments=b", "--save_main_session",
                        "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1"])


def test_a_missing_model_dir_and_an_unwritable_output_are_named(tmp_path, tiny_model_dir, capsys, one_error_line):
    corpus = _corpus(tmp_path, [{"id": 1, "text": "the cat"}])
    code, lines = _main(capsys, f"--input={corpus}", f"--model_dir={tmp_path / 'nope'}",
                        f"--output_tfrecord={tmp_path / 'o'}")
    assert code == 2
    one_error_line(lines, f"--model_dir {tmp_path / 'nope'} does not exist")
    (tmp_path / "a_file").write_text("")
    code, lines = _main(capsys, f"--input={corpus}", f"--model_dir={tiny_model_dir}",
                        f"--output_tfrecord={tmp_path / 'a_file' / 'emb'}")
    assert code == 2
    one_error_line(lines, "--output_tfrecord", "cannot write")


def test_runtime_failures_and_interrupts_are_one_line(tmp_path, monkeypatch, capsys, one_error_line):
    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_lib, "prepare", interrupted)
    code, lines = _main(capsys, "--input=x", "--output_tfrecord=out/x")
    assert code == 130 and len(lines) == 1 and lines[0].startswith("interrupted")

    def unreachable(argv):
        import urllib.error

        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as err:
            raise RuntimeError("Pipeline failed in a worker") from urllib.error.URLError(err)

    monkeypatch.setattr(run_lib, "prepare", unreachable)
    code, lines = _main(capsys, "--input=x", "--output_tfrecord=out/x")
    assert code == 1
    line = one_error_line(lines, "network error", "--model_dir", "traceback in ")
    log = line.rsplit("traceback in ", 1)[1].rstrip(")")
    assert "Traceback" in open(log).read()


def test_missing_credentials_are_one_line_with_what_to_do(monkeypatch, capsys, one_error_line):
    from google.auth.exceptions import DefaultCredentialsError

    def no_credentials(argv):
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr(run_lib, "prepare", no_credentials)
    code, lines = _main(capsys, "--input=x", "--output_tfrecord=out/x")
    assert code == 1
    one_error_line(lines, "no Google Cloud credentials", "gcloud auth application-default login")


def test_a_rerun_removes_the_partial_files_an_interrupted_attempt_left(tmp_path):
    out = tmp_path / "out"
    (out / "beam-temp-emb-1234").mkdir(parents=True)
    (out / "beam-temp-emb-1234" / "partial").write_bytes(b"x" * 100)
    (out / "beam-temp-other-1").mkdir()
    (out / "emb.runs-5678").mkdir()
    (out / "emb.runs-5678" / "shard-00000-x.run").write_bytes(b"x" * 100)
    assert run_lib.remove_partial_files([str(out / "emb"), str(out / "emb-failed")]) == 2
    assert sorted(os.listdir(out)) == ["beam-temp-other-1"]


def test_help_shows_defaults_and_what_is_required(capsys):
    assert cli.main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Required. Corpus file pattern(s)" in out
    assert "more than this fraction of the input records could not be embedded (between 0 and 1)" in out
    assert "Default: 0.1." in out and "Default: 0.5." in out and "Default: fp32." in out
    assert "Exit codes:" in out
    assert "A SavedModel is a program: load only models you trust." in out  # --model_dir's help.
    # The usage line says what is required; --verbose is an option like the others; every sink is named.
    assert out.startswith("usage: python -m pipeline.run --input PATTERN (--output_tfrecord PREFIX |")
    assert "--verbose Show every log line" in out and "Default: off." in out
    assert "TFRecord, BigQuery, or both" not in out and "a PostgreSQL table with pgvector" in out


@pytest.fixture(scope="module")
def sentence_model_dir(tmp_path_factory, tiny_vocab_file):
    """The tiny DistilBERT exported with a sentence-transformers configuration: mean pooling, normalised."""
    from model import config as config_lib
    from model.encoder import Encoder
    from model.export_lib import export_model

    out = tmp_path_factory.mktemp("sentence_model")
    export_model(str(out), encoder=Encoder(config_lib.preset("distilbert_tiny"), seed=7), vocab_file=tiny_vocab_file,
                 do_lower_case=False, sentence_config={"pooling": "mean", "normalize": True, "max_seq_length": 64})
    return str(out)


def test_the_models_own_pooling_is_the_default_and_a_flag_overriding_it_warns(
        sentence_model_dir, tmp_path, synthetic_text, caplog, read_embeddings):
    caplog.set_level(logging.INFO)
    corpus = _corpus(tmp_path, _texts(5, synthetic_text))
    plain = str(tmp_path / "plain")
    run_lib.run(["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={sentence_model_dir}",
                 f"--output_tfrecord={plain}"])
    assert "Pooling mean (model), normalize True (model), seq_length 64 (model)" in caplog.text
    explicit = str(tmp_path / "explicit")
    run_lib.run(["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={sentence_model_dir}",
                 f"--output_tfrecord={explicit}", "--pooling=mean", "--normalize", "--seq_length=64"])
    a, b = read_embeddings(plain), read_embeddings(explicit)
    for record_id in a:
        np.testing.assert_array_equal(a[record_id]["embedding"], b[record_id]["embedding"])
        assert abs(np.linalg.norm(a[record_id]["embedding"]) - 1) < 1e-5
    caplog.clear()
    run_lib.run(["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={sentence_model_dir}",
                 f"--output_tfrecord={tmp_path / 'cls'}", "--pooling=cls"])
    assert "--pooling cls overrides the model's own setting (mean)" in caplog.text


def test_export_reads_the_sentence_transformers_configuration_of_a_checkpoint(minilm_dir):
    import runtime
    from model import convert, export_lib

    assert convert.read_sentence_config(minilm_dir) == {"pooling": "mean", "normalize": True, "max_seq_length": 256}
    assert runtime.SENTENCE_CONFIG_PATH == export_lib.SENTENCE_CONFIG_PATH


def test_a_checkpoint_with_modules_the_export_cannot_reproduce_records_no_pooling(tmp_path, caplog):
    from model import convert

    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    assert convert.read_sentence_config(str(tmp_path)) is None
    assert "2_Dense (Dense)" in caplog.text and "pass --pooling" in caplog.text


@pytest.mark.parametrize("argv,fragment", [
    (["--input=c.jsonl", "--normalise", "--output_tfrecord=out/e"], "did you mean --normalize"),
    (["--input=c.jsonl", "--pooling=maxx", "--output_tfrecord=out/e"], "--pooling"),
    (["--input=c.jsonl"], "--output_tfrecord or --output_bigquery is required"),
])
def test_a_usage_error_is_reported_before_tensorflow_is_imported(argv, fragment):
    import subprocess
    import sys

    probe = ("import sys; from pipeline import cli; code = cli.main(sys.argv[1:]); "
             "print(code, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"], done
    assert fragment in done.stderr


def test_ctrl_c_during_inference_exits_130_with_one_line(tmp_path, tiny_model_dir, synthetic_text):
    import signal
    import subprocess
    import sys
    import time

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": synthetic_text(i)}) + "\n" for i in range(50_000)))
    argv = [f"--input={corpus}", f"--model_dir={tiny_model_dir}", "--batch_size=8", "--seq_length=16",
            f"--output_tfrecord={tmp_path}/out/emb"]
    process = subprocess.Popen([sys.executable, "-m", "pipeline.run", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    seen, deadline = [], time.monotonic() + 300
    while time.monotonic() < deadline:  # Interrupted once the model is loaded: records are being embedded.
        seen.append(process.stderr.readline())
        if "Model loaded in" in seen[-1] or not seen[-1]:
            break
    time.sleep(0.5)
    assert process.poll() is None, seen
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    lines = [line for line in (rest or "").strip().splitlines() if line.strip()]
    assert process.returncode == 130, (seen, lines)
    assert lines[-1].startswith("interrupted: nothing was committed") and "Traceback" not in rest
    assert not (tmp_path / "out" / "emb-manifest.json").exists()
