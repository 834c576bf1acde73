"""Incremental re-embedding: a run embeds only new and changed records and still writes the complete set."""

import glob
import json
import os

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipeline import cli
from pipeline import run as run_lib
from transforms import incremental
from transforms.records import Record, content_hash


def _manifest_files(prefix: str) -> list[str]:
    """The TFRecord files that PREFIX's manifest lists: what a later run or a reader takes as the output."""
    manifest = json.loads(open(prefix + incremental.MANIFEST_SUFFIX).read())
    return [os.path.join(os.path.dirname(prefix), name) for name in manifest["files"]]


def _run(corpus: str, root, run_id: str, model_dir: str, *extra):
    argv = ["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={model_dir}", "--batch_size=4",
            f"--output_tfrecord={root}/run={{run_id}}/part", f"--previous_output={root}/run={{latest}}/part",
            f"--run_id={run_id}", *extra]
    options, plan = run_lib.prepare(argv)
    counters = run_lib.counters(run_lib.launch(options, plan))
    print(run_lib.summarize(counters, plan))  # As the command line does.
    return f"{root}/run={run_id}/part", counters


def _changes(counters: dict) -> dict:
    return {name: counters.get(name, 0) for name in ("new", "changed", "changed_model", "unchanged", "deleted",
                                                       "embedded")}


def test_runs_embed_only_new_and_changed_records_and_write_the_complete_set(
        tmp_path, tiny_model_dir, other_model_dir, capsys, corpus_edit, write_jsonl_corpus, read_embeddings):
    root = tmp_path / "emb"
    old, new, changed, _, added = corpus_edit
    first_prefix, first = _run(write_jsonl_corpus(tmp_path / "old.jsonl", old), root, "2026-11-01T00-00-00",
                               tiny_model_dir)
    assert _changes(first)["embedded"] == 30 and _changes(first)["new"] == 0  # Nothing earlier: a full run.
    first_rows = read_embeddings(_manifest_files(first_prefix))

    new_corpus = write_jsonl_corpus(tmp_path / "new.jsonl", new)
    second_prefix, second = _run(new_corpus, root, "2026-11-02T00-00-00", tiny_model_dir)
    assert _changes(second) == {"new": 4, "changed": 3, "changed_model": 0, "unchanged": 25, "deleted": 2,
                                "embedded": 7}
    assert f"Since {first_prefix}: new 4, changed 3 (0 for another model), unchanged 25" in capsys.readouterr().out
    second_rows = read_embeddings(_manifest_files(second_prefix))
    assert sorted(second_rows) == sorted(new)
    # Unchanged records are the earlier Examples byte for byte; exactly the new and changed ones were embedded.
    rewritten = {i for i, row in second_rows.items() if first_rows.get(i, {}).get("serialized") != row["serialized"]}
    assert rewritten == changed | set(added)

    full_prefix = str(tmp_path / "full" / "part")
    run_lib.run(["--runner=FnApiRunner", f"--input={new_corpus}", f"--model_dir={tiny_model_dir}",
                 f"--output_tfrecord={full_prefix}"])
    full_rows = read_embeddings(_manifest_files(full_prefix))
    assert sorted(full_rows) == sorted(second_rows)
    for record_id, row in full_rows.items():
        assert second_rows[record_id]["content_hash"] == row["content_hash"]
        assert second_rows[record_id]["model"] == row["model"]
        np.testing.assert_allclose(second_rows[record_id]["embedding"], row["embedding"], atol=1e-6, rtol=0)

    third_prefix, third = _run(new_corpus, root, "2026-11-03T00-00-00", tiny_model_dir)
    assert _changes(third) == {"new": 0, "changed": 0, "changed_model": 0, "unchanged": 32, "deleted": 0,
                               "embedded": 0}
    assert {i: r["serialized"] for i, r in read_embeddings(_manifest_files(third_prefix)).items()} == {
        i: r["serialized"] for i, r in second_rows.items()}

    fourth_prefix, fourth = _run(new_corpus, root, "2026-11-04T00-00-00", other_model_dir)
    assert _changes(fourth) == {"new": 0, "changed": 32, "changed_model": 32, "unchanged": 0, "deleted": 0,
                                "embedded": 32}
    fourth_rows = read_embeddings(_manifest_files(fourth_prefix))
    assert sorted(fourth_rows) == sorted(new)
    assert len({row["model"] for row in fourth_rows.values()} | {row["model"] for row in second_rows.values()}) == 2


def test_a_repeated_run_reads_the_same_earlier_output_and_overwrites_its_own(
        tmp_path, tiny_model_dir, synthetic_text, write_jsonl_corpus, read_embeddings):
    root = tmp_path / "emb"
    corpus = write_jsonl_corpus(tmp_path / "c.jsonl", {f"d{i}": synthetic_text(i) for i in range(5)})
    _run(corpus, root, "2026-11-01T00-00-00", tiny_model_dir)
    prefix, once = _run(corpus, root, "2026-11-02T00-00-00", tiny_model_dir)
    first_bytes = {i: r["serialized"] for i, r in read_embeddings(_manifest_files(prefix)).items()}
    # Run 2 again: {latest} still means run 1 (the newest before it), not run 2 itself.
    prefix_again, again = _run(corpus, root, "2026-11-02T00-00-00", tiny_model_dir)
    assert prefix_again == prefix and _changes(again) == _changes(once)
    assert {i: r["serialized"] for i, r in read_embeddings(_manifest_files(prefix)).items()} == first_bytes


def _example(record_id, text_hash, model, sequence=False, value=1.0):
    features = {"id": [record_id.encode()], "content_hash": [text_hash.encode()], "model": [model.encode()]}
    example = tf.train.Example()
    for name, values in features.items():
        example.features.feature[name].bytes_list.value.extend(values)
    example.features.feature["embedding"].float_list.value.extend([value, value])
    if sequence:
        example.features.feature["sequence_length"].int64_list.value.append(1)
    return example.SerializeToString()


def _record(record_id, text):
    return Record(id=record_id, texts=(text,), content_hash=content_hash((text,)), source="c.jsonl")


def test_select_changed_joins_on_id_and_counts_each_case():
    h = {t: content_hash((t,)) for t in ("same", "old", "new", "seq", "dup")}
    previous = [
        ("keep", _example("keep", h["same"], "m1", value=7.0)),
        ("edit", _example("edit", h["old"], "m1")),
        ("gone", _example("gone", h["same"], "m1")),
        ("oldmodel", _example("oldmodel", h["same"], "m0")),
        ("seq", _example("seq", h["seq"], "m1", sequence=True)),
        ("dup", _example("dup", h["dup"], "m1", value=3.0)),
    ]
    records = [_record("keep", "same"), _record("edit", "new"), _record("fresh", "new"),
               _record("oldmodel", "same"), _record("seq", "seq"), _record("dup", "dup"), _record("dup", "dup")]
    pipeline = beam.Pipeline(runner="FnApiRunner", options=PipelineOptions([]))
    keyed_previous = (pipeline | "Previous" >> beam.Create([(f"f{i}", s) for i, (_, s) in enumerate(previous)])
                      | beam.Map(incremental.key_previous))
    to_embed, carried, deleted, refreshed = (pipeline | "Records" >> beam.Create(records)
                                             | incremental.SelectChanged(keyed_previous, "m1", with_sequence=False))
    assert_that(deleted, equal_to(["gone"]), label="Deleted")
    assert_that(refreshed, equal_to([]), label="NoKeptFieldChanged")
    assert_that(to_embed | beam.Map(lambda r: r.id), equal_to(["edit", "fresh", "oldmodel", "seq"]),
                label="Embedded")
    # Carried Examples are the earlier bytes (value 7.0 and 3.0 survive); a duplicated id is carried twice,
    # as a full run would write it twice.
    assert_that(carried, equal_to([previous[0][1], previous[5][1], previous[5][1]]), label="Carried")
    result = pipeline.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed
                for c in result.metrics().query(MetricsFilter().with_namespace("embeddings"))["counters"]}
    assert counters == {"new": 1, "changed": 3, "changed_model": 2, "unchanged": 3, "deleted": 1}


def _touch_run(root, run_id, manifest=True, shards=("part-00000-of-00001.tfrecord",)):
    directory = root / f"run={run_id}"
    directory.mkdir(parents=True)
    for shard in shards:
        (directory / shard).write_bytes(b"")
    if manifest:
        (directory / ("part" + incremental.MANIFEST_SUFFIX)).write_text(
            json.dumps({"run_id": run_id, "model": "m", "files": list(shards)}))
    return str(directory / "part")


def test_latest_is_the_newest_complete_run_before_this_one(tmp_path):
    first = _touch_run(tmp_path, "2026-01-01T00-00-00")
    second = _touch_run(tmp_path, "2026-01-02T00-00-00")
    _touch_run(tmp_path, "2026-01-03T00-00-00", manifest=False)  # Failed: it never wrote its manifest.
    pattern = f"{tmp_path}/run={{latest}}/part"
    assert incremental.resolve_previous(pattern, "2026-01-04T00-00-00") == second
    assert incremental.resolve_previous(pattern, "2026-01-02T00-00-00") == first
    assert incremental.resolve_previous(pattern, "2026-01-01T00-00-00") is None
    assert incremental.resolve_previous(first, "2026-01-04T00-00-00") == first


def test_previous_files_come_from_the_manifest_and_stale_shards_are_ignored(tmp_path):
    prefix = _touch_run(tmp_path, "a", shards=("part-00000-of-00002.tfrecord", "part-00001-of-00002.tfrecord"))
    (tmp_path / "run=a" / "part-00000-of-00003.tfrecord").write_bytes(b"")  # Left by an earlier attempt.
    assert [os.path.basename(f) for f in incremental.previous_files(prefix)] == [
        "part-00000-of-00002.tfrecord", "part-00001-of-00002.tfrecord"]
    os.remove(tmp_path / "run=a" / "part-00001-of-00002.tfrecord")
    with pytest.raises(ValueError, match="--previous_output.*gone"):
        incremental.previous_files(prefix)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "part-00000-of-00001.tfrecord").write_bytes(b"")
    assert incremental.previous_files(str(bare / "part")) == glob.glob(str(bare / "part-*"))
    with pytest.raises(ValueError, match="--previous_output"):
        incremental.previous_files(str(tmp_path / "nothing" / "part"))


@pytest.mark.parametrize("name", ["../run=b/part-00000-of-00001.tfrecord", "/abs/part-00000-of-00001.tfrecord",
                                  "gs://other/part-00000-of-00001.tfrecord", "other-00000-of-00001.tfrecord"])
def test_a_manifest_is_trusted_only_for_its_own_shards(name, tmp_path):
    _touch_run(tmp_path, "b")  # What a crafted manifest would point at: another run's embeddings.
    prefix = _touch_run(tmp_path, "a", shards=("part-00000-of-00001.tfrecord",))
    manifest = tmp_path / "run=a" / ("part" + incremental.MANIFEST_SUFFIX)
    manifest.write_text(json.dumps({"run_id": "a", "model": "m", "files": ["part-00000-of-00001.tfrecord", name]}))
    with pytest.raises(ValueError, match="trusted only for files in its own run directory") as raised:
        incremental.previous_files(prefix)
    assert repr(name) in str(raised.value)


@pytest.mark.parametrize("extra,message", [
    (["--previous_output={out}"], "this run's own --output_tfrecord"),
    (["--previous_output={root}/run={{run_id}}/part"], "--previous_output"),
    (["--previous_output={root}/missing/part"], "--previous_output"),
    (["--run_id=a/b"], "--run_id"),
])
def test_incremental_mistakes_get_one_clear_line(extra, message, tmp_path, tiny_model_dir, capsys, write_jsonl_corpus,
                                                 one_error_line):
    corpus = write_jsonl_corpus(tmp_path / "c.jsonl", {"x": "the cat"})
    out = f"{tmp_path}/run=r1/part"
    _touch_run(tmp_path, "r1")
    argv = [f"--input={corpus}", f"--model_dir={tiny_model_dir}", "--runner=FnApiRunner", "--run_id=r1",
            f"--output_tfrecord={tmp_path}/run={{run_id}}/part"]
    argv = argv + [arg.format(out=out, root=tmp_path) for arg in extra]
    assert cli.main(argv) == 2
    one_error_line(capsys.readouterr().err.strip().splitlines(), message)


@pytest.mark.parametrize("manifest", [True, False])
def test_a_symbolic_link_named_like_a_shard_is_refused(manifest, tmp_path):
    other = _touch_run(tmp_path, "b")
    prefix = _touch_run(tmp_path, "a", manifest=manifest, shards=("part-00000-of-00002.tfrecord",))
    (tmp_path / "run=a" / "part-00001-of-00002.tfrecord").symlink_to(other + "-00000-of-00001.tfrecord")
    if manifest:
        (tmp_path / "run=a" / ("part" + incremental.MANIFEST_SUFFIX)).write_text(json.dumps(
            {"run_id": "a", "model": "m", "files": ["part-00000-of-00002.tfrecord", "part-00001-of-00002.tfrecord"]}))
    with pytest.raises(ValueError, match="--previous_output .*part-00001-of-00002.tfrecord is a symbolic link"):
        incremental.previous_files(prefix)
