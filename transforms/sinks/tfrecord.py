"""TFRecord: tf.train.Example files with a manifest, the history an incremental run reads (--output_tfrecord).

The writer itself is transforms.write.WriteTFRecord (shards byte for byte the same every run, stale shards
removed) and the manifest transforms.incremental.WriteManifest, written last, after the verdict.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from transforms.sinks import FileSink, Loaded

__all__ = ["TFRecordSink", "load"]


@dataclasses.dataclass(frozen=True)
class TFRecordSink(FileSink):
    """PREFIX-SSSSS-of-NNNNN.tfrecord and PREFIX-manifest.json.

    Attributes:
        prefix: the output prefix, {run_id} filled in.
        expected_records: about how many records, for the shard count (None: unknown).
    """

    prefix: str
    expected_records: int | None = None
    flag = "--output_tfrecord"
    suffix = ".tfrecord"  # transforms.write.TFRECORD_SUFFIX, without importing the writer here.

    def write(self, outputs) -> None:
        from transforms import incremental, write

        written = outputs.embeddings | "WriteTFRecord" >> write.WriteTFRecord(
            self.prefix, outputs.model, expected_records=self.expected_records, verdict=outputs.verdict,
            carried_forward=outputs.carried_forward)
        _ = written | "WriteManifest" >> incremental.WriteManifest(self.prefix, outputs.run_id, outputs.model,
                                                                   verdict=outputs.verdict)

    def load(self) -> Loaded:
        return load(self.prefix)


def load(prefix: str) -> Loaded:
    """Reads the TFRecord output of a run, PREFIX-*.tfrecord (local or gs://).

    Raises:
        ValueError: If no file matches the prefix, the prefix cannot be listed, or a file is damaged or holds
            something other than embedding records.
    """
    from apache_beam.io.filesystem import BeamIOError
    from apache_beam.io.filesystems import FileSystems

    from transforms import framing
    from transforms.write import TFRECORD_SUFFIX

    pattern = f"{prefix}-*{TFRECORD_SUFFIX}"
    try:
        paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    except BeamIOError as err:
        raise ValueError(f"Cannot list {pattern}: {err}") from err
    if not paths:
        raise ValueError(f"No files match {pattern}; pass the --output_tfrecord prefix of a run.")
    ids, vectors, models = [], [], set()
    for path in sorted(paths):
        # The pipeline's own TFRecord reader, not TensorFlow's: no TensorFlow import and its start-up chatter,
        # gs:// through Beam, and a damaged file is one line instead of a DataLossError traceback.
        with framing.open_file(path) as handle:
            for item in framing.read_tfrecords(handle, path):
                if isinstance(item, framing.Damage):
                    raise ValueError(f"{path} is damaged ({item.reason}): {item.detail}")
                record_id, vector, model = _embedding_record(item, path)
                ids.append(record_id)
                vectors.append(vector)
                models.add(model)
    if len({vector.shape for vector in vectors}) > 1:
        dimensions = ", ".join(str(d) for d in sorted({vector.size for vector in vectors}))
        raise ValueError(f"{pattern} holds embeddings of dimensions {dimensions}: pass the prefix of one run.")
    return Loaded(ids, np.stack(vectors) if vectors else np.zeros((0, 0), np.float32), models, pattern)


def _embedding_record(serialized: bytes, path: str) -> tuple[str, np.ndarray, str]:
    """The id, embedding and model fingerprint of one record of the output, as transforms/write.py writes it."""
    from transforms.examples import parse_example, value_kind

    try:
        features = parse_example(serialized)
    except ValueError as err:
        raise ValueError(f"{path} holds a record that is {err}") from err
    kinds = {name: value_kind(features.get(name)) for name in ("id", "embedding", "model")}
    if kinds != {"id": "bytes_list", "embedding": "float_list", "model": "bytes_list"} or not (
            len(features["id"]) == len(features["model"]) == 1):
        raise ValueError(f"{path} holds a record that is not an embedding record (features: {kinds})")
    return features["id"][0].decode(), features["embedding"], features["model"][0].decode()
