"""Models in GCS: model.export writes to gs://, and runtime.stage_locally (through Beam) copies them back, once."""

import filecmp
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  Registers the preprocessor's ops.
from apache_beam.io.filesystems import FileSystems

from model import export, export_lib
from model import storage as storage_lib
from runtime import stage_locally
from transforms.files import BeamFiles

REPO = pathlib.Path(__file__).resolve().parents[2]
TEXTS = ["the cat sat on the mat .", "Hello World !", "unbelievable"]


def _tree(root):
    """Relative paths of every file under root."""
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def _same_tree(a, b):
    assert _tree(a) == _tree(b)
    _, mismatch, errors = filecmp.cmpfiles(a, b, _tree(a), shallow=False)
    assert not mismatch and not errors


def _outputs(model_dir):
    preprocessor = tf.saved_model.load(os.path.join(model_dir, "preprocessor"))
    encoder = tf.saved_model.load(os.path.join(model_dir, "encoder"))
    inputs = preprocessor(tf.constant(TEXTS))
    return {key: value.numpy() for key, value in inputs.items()}, encoder(inputs)["pooled_output"].numpy()


def test_model_export_writes_to_gcs_and_loads_back_like_a_local_export(
        gcs_model_dir, gcs, bucket, tiny_model_dir, tmp_path):
    # gcs_model_dir: tiny_model_dir's model (preset, vocab and seed) exported by the command line to gs://.
    assert gcs_model_dir == "gs://tests/models/tiny"
    names = sorted(blob.name[len("models/tiny/"):] for blob in gcs.list_blobs("tests", prefix="models/tiny/"))
    assert names == _tree(tiny_model_dir)
    for part in ("encoder", "preprocessor"):
        pb = bucket.blob(f"models/tiny/{part}/saved_model.pb").download_as_bytes()
        # The local scratch directory the export went through does not leak into the graph.
        assert tempfile.gettempdir().encode() not in pb
    local_dir = tmp_path / "staged"
    local_dir.mkdir()
    for part in ("encoder", "preprocessor"):
        os.symlink(stage_locally(f"{gcs_model_dir}/{part}", files=BeamFiles()), local_dir / part)
    inputs, pooled = _outputs(str(local_dir))
    expected_inputs, expected_pooled = _outputs(tiny_model_dir)
    for key, value in expected_inputs.items():
        np.testing.assert_array_equal(inputs[key], value)
    np.testing.assert_allclose(pooled, expected_pooled, atol=1e-6, rtol=0)


def test_model_export_to_a_missing_bucket_fails_before_exporting(gcp_emulators, tiny_vocab_file, monkeypatch, capsys):
    monkeypatch.setattr(export_lib, "export_model", lambda *a, **k: pytest.fail("exported before checking the bucket"))
    code = export.main(["--preset", "distilbert_tiny", "--vocab", tiny_vocab_file,
                        "--output_dir", "gs://no-such-bucket/models/x"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: --output_dir gs://no-such-bucket/models/x") and "does not exist" in err


def _upload_tiny(tiny_model_dir, uri):
    storage_lib.upload_dir(os.path.join(tiny_model_dir, "encoder"), uri)
    return uri


def _count_opens(monkeypatch):
    opened = []
    real_open = FileSystems.open

    def counting_open(path, *args, **kwargs):
        opened.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(FileSystems, "open", counting_open)
    return opened


def test_a_staged_model_is_reused_until_the_model_changes(gcp_emulators, bucket, tiny_model_dir, monkeypatch):
    uri = _upload_tiny(tiny_model_dir, "gs://tests/stage/reuse/encoder")
    opened = _count_opens(monkeypatch)
    first = stage_locally(uri, files=BeamFiles())
    assert len(opened) == len(_tree(os.path.join(tiny_model_dir, "encoder")))
    _same_tree(os.path.join(tiny_model_dir, "encoder"), first)

    opened.clear()
    assert stage_locally(uri + "/", files=BeamFiles()) == first
    assert opened == []  # Reused: listed, not copied.

    time.sleep(1.1)  # GCS modification times have a one-second grain in Beam's listing.
    bucket.blob("stage/reuse/encoder/assets/vocab.txt").upload_from_string(b"changed\n")
    changed = stage_locally(uri, files=BeamFiles())
    assert changed != first and not os.path.exists(first)  # A fresh copy; the stale one is removed.
    with open(os.path.join(changed, "assets", "vocab.txt"), "rb") as f:
        assert f.read() == b"changed\n"
    assert sorted(os.listdir(os.path.dirname(changed))) == [".lock", os.path.basename(changed)]


def test_a_failed_copy_leaves_nothing_behind_and_the_next_one_succeeds(
        gcp_emulators, bucket, tiny_model_dir, monkeypatch):
    uri = _upload_tiny(tiny_model_dir, "gs://tests/stage/fail/encoder")
    real_open = FileSystems.open

    def failing_open(path, *args, **kwargs):
        if path.endswith("saved_model.pb"):
            raise OSError("connection reset")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(FileSystems, "open", failing_open)
    with pytest.raises(OSError, match="connection reset"):
        stage_locally(uri, files=BeamFiles())
    monkeypatch.setattr(FileSystems, "open", real_open)
    staged = stage_locally(uri, files=BeamFiles())
    assert sorted(os.listdir(os.path.dirname(staged))) == [".lock", os.path.basename(staged)]
    _same_tree(os.path.join(tiny_model_dir, "encoder"), staged)


def test_a_directory_without_saved_model_is_refused(gcp_emulators, bucket):
    bucket.blob("stage/empty/notes.txt").upload_from_string(b"no model here")
    with pytest.raises(ValueError, match="saved_model.pb"):
        stage_locally("gs://tests/stage/empty", files=BeamFiles())


_STAGER = """
import logging, os, sys, time
logging.basicConfig(level=logging.INFO, format="%(message)s")
from runtime import stage_locally
from transforms.files import BeamFiles
go = sys.argv[2]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
print(stage_locally(sys.argv[1], files=BeamFiles()), flush=True)
"""


def test_concurrent_stagers_make_one_whole_copy_that_all_of_them_use(
        gcp_emulators, bucket, tiny_model_dir, tmp_path):
    uri = _upload_tiny(tiny_model_dir, "gs://tests/stage/race/encoder")
    go = tmp_path / "go"
    stagers = [subprocess.Popen([sys.executable, "-c", _STAGER, uri, str(go)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=str(tmp_path),
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
               for _ in range(3)]
    for stager in stagers:  # Every process has imported Beam and waits: then all start at once.
        assert stager.stdout.readline().strip() == "ready"
    go.touch()
    results = [stager.communicate(timeout=120) for stager in stagers]
    assert [stager.returncode for stager in stagers] == [0] * 3, [err[-2000:] for _, err in results]
    paths = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(paths) == 1
    staged = paths.pop()
    assert sum(err.count("Staged gs://") for _, err in results) == 1  # One process copied; two waited.
    _same_tree(os.path.join(tiny_model_dir, "encoder"), staged)
    assert sorted(os.listdir(os.path.dirname(staged))) == [".lock", os.path.basename(staged)]
