"""The TFRecord sink (transforms.write.WriteTFRecord): the same records give the same files byte for byte, and a
prefix holds exactly the files of its latest run, which TensorFlow reads with feature_spec()."""

import glob
import hashlib
import os
import re

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from runtime import Embedding
from transforms import write
from transforms.examples import serialize_example
from transforms.records import RecordKey
from transforms.write import WriteTFRecord

_MODEL = "fingerprint"


def _embeddings(count: int, with_sequence: bool = False) -> list:
    """(RecordKey, Embedding) pairs, ids in no sorted order."""
    rng = np.random.default_rng(7)
    pairs = []
    for i in rng.permutation(count):
        tokens = int(i % 5) + 2
        sequence = rng.standard_normal((tokens, 4)).astype(np.float32) if with_sequence else None
        pairs.append((RecordKey(f"doc-{i}", hashlib.sha256(str(i).encode()).hexdigest(), "corpus.jsonl"),
                      Embedding(rng.standard_normal(4).astype(np.float32), tokens, False, sequence)))
    return pairs


def _write(prefix: str, embeddings: list, carried: list | None = None, **kwargs) -> None:
    """Runs WriteTFRecord over `embeddings` (and `carried` Examples); checks it returns exactly the files that
    match PREFIX-*-of-*.tfrecord."""
    with TestPipeline() as p:
        records = p | "Embeddings" >> beam.Create(embeddings)
        if carried is not None:
            kwargs["carried_forward"] = p | "Carried" >> beam.Create(carried)
        written = records | WriteTFRecord(prefix, _MODEL, **kwargs)
        assert_that(written, _matches_glob(prefix))


def _matches_glob(prefix: str):
    """A Beam matcher: the written names are the files PREFIX-SSSSS-of-NNNNN.tfrecord, checked once the writes
    are done."""
    def check(written):
        shard = re.compile(re.escape(os.path.basename(prefix)) + r"-\d{5}-of-\d{5}\.tfrecord")
        assert sorted(written) == sorted(path for path in glob.glob(prefix + "-*-of-*.tfrecord")
                                         if shard.fullmatch(os.path.basename(path)))
    return check


def _files(prefix: str) -> dict[str, bytes]:
    return {os.path.basename(path): open(path, "rb").read() for path in sorted(glob.glob(prefix + "-*"))}


def _ids_per_file(prefix: str) -> list[list[bytes]]:
    import tensorflow as tf

    return [[tf.train.Example.FromString(serialized.numpy()).features.feature["id"].bytes_list.value[0]
             for serialized in tf.data.TFRecordDataset(path)]
            for path in sorted(glob.glob(prefix + "-*-of-*.tfrecord"))]


@pytest.mark.parametrize("num_shards, expected_shards", [(0, 1), (4, 4)])
def test_the_same_records_give_identical_files(tmp_path, num_shards, expected_shards, read_embeddings):
    """Shards by a hash of the id, records sorted by id, features in sorted order: no run-to-run variation,
    whatever order the records arrive in."""
    embeddings = _embeddings(600, with_sequence=True)
    first, second = str(tmp_path / "first" / "emb"), str(tmp_path / "second" / "emb")
    options = {"num_shards": num_shards} if num_shards else {}
    _write(first, embeddings, **options)
    _write(second, embeddings[::-1], **options)

    files = _files(first)
    assert sorted(files) == [f"emb-{i:05d}-of-{expected_shards:05d}.tfrecord" for i in range(expected_shards)]
    assert files == _files(second)
    for ids in _ids_per_file(first):
        assert ids and ids == sorted(ids)

    records = read_embeddings(first, with_sequence=True)
    assert len(records) == len(embeddings)
    for (record_id, content_hash, *_), embedding in embeddings:
        parsed = records[record_id]
        np.testing.assert_array_equal(parsed["embedding"], embedding.vector)
        np.testing.assert_array_equal(parsed["sequence"], embedding.sequence.reshape(-1))
        assert parsed["sequence_length"] == embedding.tokens
        assert parsed["model"] == _MODEL and parsed["content_hash"] == content_hash


def test_the_shard_count_follows_from_the_expected_records(tmp_path, monkeypatch, read_embeddings):
    monkeypatch.setattr(write, "RECORDS_PER_SHARD", 100)
    prefix = str(tmp_path / "emb")
    _write(prefix, _embeddings(250), expected_records=250)
    assert sorted(_files(prefix)) == [f"emb-{i:05d}-of-00003.tfrecord" for i in range(3)]
    assert len(read_embeddings(prefix)) == 250
    assert write.shard_count(None) == 1 and write.shard_count(100) == 1 and write.shard_count(101) == 2


def test_records_past_the_spill_buffer_are_merged_from_sorted_runs_into_the_same_files(tmp_path, monkeypatch):
    embeddings = _embeddings(300)
    whole = str(tmp_path / "whole" / "emb")
    _write(whole, embeddings, num_shards=2)
    monkeypatch.setattr(write, "SPILL_BYTES", 2000)  # A few dozen Examples per run: many runs per shard.
    spilled = str(tmp_path / "spilled" / "emb")
    _write(spilled, embeddings[::-1], num_shards=2)
    assert _files(spilled) == _files(whole)
    assert sorted(os.listdir(tmp_path / "spilled")) == ["emb-00000-of-00002.tfrecord", "emb-00001-of-00002.tfrecord"]


def test_no_records_give_one_empty_shard(tmp_path):
    prefix = str(tmp_path / "emb")
    _write(prefix, [])
    assert _files(prefix) == {"emb-00000-of-00001.tfrecord": b""}


def test_carried_forward_examples_are_written_unchanged_among_the_new_ones(tmp_path):
    embeddings = _embeddings(20)
    carried = [serialize_example({"model": [b"earlier"], "id": [f"old-{i}".encode()], "content_hash": [b"h"],
                                  "embedding": np.full(4, i, np.float32)}) for i in range(10)]
    prefix = str(tmp_path / "emb")
    _write(prefix, embeddings, carried, num_shards=2)
    written = [record for path in sorted(glob.glob(prefix + "-*.tfrecord"))
               for record in _tfrecords(path)]
    assert set(carried) <= set(written) and len(written) == 30
    for ids in _ids_per_file(prefix):
        assert ids == sorted(ids)


def _tfrecords(path: str) -> list[bytes]:
    import tensorflow as tf

    return [serialized.numpy() for serialized in tf.data.TFRecordDataset(path)]


def test_a_rerun_removes_the_shards_and_temporary_files_of_an_earlier_write(tmp_path, read_embeddings):
    """An earlier attempt wrote three shards: the documented glob must not read its ids a second time."""
    import tensorflow as tf

    embeddings = _embeddings(40)
    prefix = str(tmp_path / "emb")
    for i in range(3):
        with tf.io.TFRecordWriter(f"{prefix}-{i:05d}-of-00003.tfrecord") as writer:
            for (record_id, content_hash, *_), embedding in embeddings[i::3]:
                writer.write(serialize_example({"id": [record_id.encode()], "embedding": embedding.vector,
                                                "model": [b"old"], "content_hash": [content_hash.encode()]}))
    temp = f"{prefix}-00001-of-00003.tfrecord.temp-{'0' * 32}"
    kept = [f"{prefix}-v2-00000-of-00001.tfrecord", f"{prefix}-failed-00000-of-00001.jsonl",
            f"{prefix}-manifest.json", f"{prefix}-00000-of-00003.tfrecord.bak"]
    for path in [temp, *kept]:
        with open(path, "wb") as f:
            f.write(b"not ours to delete" if path in kept else b"partial")

    _write(prefix, embeddings)

    assert sorted(glob.glob(prefix + "-*-of-*.tfrecord")) == [
        f"{prefix}-00000-of-00001.tfrecord", f"{prefix}-v2-00000-of-00001.tfrecord"]
    assert not os.path.exists(temp)
    assert all(open(path, "rb").read() == b"not ours to delete" for path in kept)
    os.remove(kept[0])  # Another prefix's shard, which the README's PREFIX-*.tfrecord glob also matches.
    records = read_embeddings(prefix)
    assert sorted(records) == sorted(key[0] for key, _ in embeddings)
    assert {parsed["model"] for parsed in records.values()} == {_MODEL}


def test_a_shard_that_fails_midway_leaves_no_file_under_its_final_name(tmp_path):
    import tensorflow as tf

    run = str(tmp_path / "emb.runs-x" / "shard-00000-a.run")
    os.makedirs(os.path.dirname(run))
    with tf.io.TFRecordWriter(run) as writer:  # An id, then its Example: one whole pair ...
        writer.write(b"a")
        writer.write(b"x")
    with open(run, "ab") as f:  # ... then a record cut short, as by a disk that filled up.
        f.write(b"\x05\x00\x00")
    prefix = str(tmp_path / "emb")
    with pytest.raises(ValueError):
        write.merge_shard((0, [run, None]), prefix, 1)
    assert not glob.glob(prefix + "-*.tfrecord")
