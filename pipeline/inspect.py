"""Shows what an embedding output holds: python -m pipeline.inspect PREFIX [--corpus FILE.jsonl].

Prints the record count, the embedding shape, the model fingerprint(s), how many failures sit in the
dead-letter output, and for a few records their nearest neighbours by cosine similarity.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

__all__ = ["load_embeddings", "nearest_neighbours", "main"]


def load_embeddings(prefix: str) -> tuple[list[str], np.ndarray, set[str]]:
    """Reads PREFIX-*.tfrecord (local or gs://) into ids, a [count, hidden] matrix and the model fingerprints."""
    import tensorflow as tf
    from apache_beam.io.filesystems import FileSystems

    from transforms.write import TFRECORD_SUFFIX, feature_spec

    paths = [m.path for m in FileSystems.match([f"{prefix}-*{TFRECORD_SUFFIX}"])[0].metadata_list]
    if not paths:
        raise ValueError(f"No files match {prefix}-*{TFRECORD_SUFFIX}; pass the --output_tfrecord prefix of a run.")
    ids, vectors, models = [], [], set()
    for path in sorted(paths):
        for serialized in _records(path, tf):
            parsed = tf.io.parse_single_example(serialized, feature_spec())
            ids.append(parsed["id"].numpy().decode())
            vectors.append(parsed["embedding"].numpy())
            models.add(parsed["model"].numpy().decode())
    return ids, np.stack(vectors) if vectors else np.zeros((0, 0), np.float32), models


def _records(path: str, tf):
    """Iterates a TFRecord file; remote files are copied through Beam's FileSystems, which reach any gs://."""
    import tempfile

    from apache_beam.io.filesystems import FileSystems

    if "://" not in path:
        yield from tf.data.TFRecordDataset(path)
        return
    with tempfile.NamedTemporaryFile(suffix=".tfrecord") as tmp, FileSystems.open(path) as source:
        tmp.write(source.read())
        tmp.flush()
        yield from tf.data.TFRecordDataset(tmp.name)


def nearest_neighbours(vectors: np.ndarray, index: int, k: int) -> list[tuple[int, float]]:
    """The k rows most cosine-similar to row `index` (itself excluded), best first."""
    norms = np.linalg.norm(vectors, axis=1)
    scores = vectors @ vectors[index] / np.maximum(norms * norms[index], 1e-12)
    scores[index] = -np.inf
    best = np.argsort(-scores)[:k]
    return [(int(i), float(scores[i])) for i in best]


def _count_failures(prefix: str) -> int:
    from apache_beam.io.filesystems import FileSystems

    total = 0
    for metadata in FileSystems.match([f"{prefix}-*.jsonl"])[0].metadata_list:
        with FileSystems.open(metadata.path) as f:
            total += sum(1 for line in f.read().splitlines() if line.strip())
    return total


def _texts_by_id(corpus: str | None, id_field: str, text_field: str) -> dict[str, str]:
    if not corpus:
        return {}
    texts = {}
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                texts[str(record.get(id_field))] = str(record.get(text_field))
    return texts


def _label(record_id: str, texts: dict[str, str]) -> str:
    text = texts.get(record_id)
    return f"{record_id}: {text}" if text else record_id


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("prefix", help="The --output_tfrecord prefix of a run.")
    parser.add_argument("--failed", help="Dead-letter prefix (default: PREFIX-failed).")
    parser.add_argument("--corpus", help="A JSONL corpus to show texts beside ids.")
    parser.add_argument("--id_field", default="id")
    parser.add_argument("--text_field", default="text")
    parser.add_argument("--samples", type=int, default=3, help="How many records to show neighbours for.")
    parser.add_argument("-k", type=int, default=3, help="Neighbours per record.")
    args = parser.parse_args(argv)
    try:
        ids, vectors, models = load_embeddings(args.prefix)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failures = _count_failures(args.failed or args.prefix + "-failed")
    print(f"{len(ids)} embeddings of dimension {vectors.shape[1] if len(ids) else 0} in {args.prefix}-*.tfrecord; "
          f"{failures} records in the dead-letter output; model fingerprint(s): {', '.join(sorted(models))}")
    texts = _texts_by_id(args.corpus, args.id_field, args.text_field)
    step = max(len(ids) // max(args.samples, 1), 1)
    for index in list(range(0, len(ids), step))[:args.samples]:
        print(f"\n{_label(ids[index], texts)}")
        for neighbour, score in nearest_neighbours(vectors, index, min(args.k, len(ids) - 1)):
            print(f"  {score:.3f}  {_label(ids[neighbour], texts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
