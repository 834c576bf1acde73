"""Writes exported SavedModels to Google Cloud Storage: export to a local directory, then upload it."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

__all__ = ["is_gcs", "split_gcs_uri", "upload_dir", "local_output_dir"]

_SCHEME = "gs://"
# Uploaded last in each directory: a reader that finds saved_model.pb finds a complete SavedModel.
_LAST = "saved_model.pb"


def is_gcs(path: str) -> bool:
    """Whether `path` is a gs:// URI."""
    return path.startswith(_SCHEME)


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """gs://bucket/a/b -> ("bucket", "a/b"); ValueError when there is no bucket name."""
    if not is_gcs(uri):
        raise ValueError(f"{uri} is not a gs:// URI.")
    bucket, _, name = uri[len(_SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"{uri} names no bucket; use gs://BUCKET/PATH.")
    return bucket, name.strip("/")


def _client():
    from google.cloud import storage

    # No project: object reads and writes need none, and the client library then needs no default project.
    return storage.Client(project=None)


def _check_bucket(client, uri: str, flag: str):
    """Returns the bucket of `uri`, or raises ValueError naming `flag` when it does not exist."""
    from google.api_core import exceptions

    bucket_name, _ = split_gcs_uri(uri)
    try:
        bucket = client.lookup_bucket(bucket_name)
    except exceptions.Forbidden:
        # Writers often hold object permissions only (roles/storage.objectCreator), not storage.buckets.get.
        logging.info("Cannot read the metadata of bucket %s; assuming it exists.", bucket_name)
        return client.bucket(bucket_name)
    if bucket is None:
        raise ValueError(f"{flag} {uri}: bucket gs://{bucket_name} does not exist; create it first "
                         f"(gcloud storage buckets create gs://{bucket_name}).")
    return bucket


def _upload_order(local_dir: str) -> list[str]:
    """Relative paths of every file under local_dir, each directory's saved_model.pb after its other files."""
    paths = []
    for root, _, files in os.walk(local_dir):
        for name in files:
            paths.append(os.path.relpath(os.path.join(root, name), local_dir))
    return sorted(paths, key=lambda path: (os.path.basename(path) == _LAST, path))


def upload_dir(local_dir: str, uri: str, flag: str = "--output_dir") -> list[str]:
    """Uploads every file under `local_dir` to the gs:// directory `uri`; returns the object URIs written.

    Objects already under `uri` are overwritten, not deleted. Each SavedModel's saved_model.pb is uploaded
    after the rest of its directory, so readers that look for it never load a half-uploaded model.

    Raises:
      ValueError: naming `flag`, when the bucket does not exist.
    """
    client = _client()
    bucket = _check_bucket(client, uri, flag)
    _, prefix = split_gcs_uri(uri)
    written = []
    for relative in _upload_order(local_dir):
        name = "/".join(part for part in (prefix, relative.replace(os.sep, "/")) if part)
        bucket.blob(name).upload_from_filename(os.path.join(local_dir, relative))
        written.append(f"{_SCHEME}{bucket.name}/{name}")
    logging.info("Uploaded %d files from %s to %s", len(written), local_dir, uri)
    return written


@contextlib.contextmanager
def local_output_dir(output_dir: str, flag: str = "--output_dir") -> Iterator[str]:
    """Yields a local directory to write `output_dir`'s contents into.

    A local `output_dir` is yielded as is. For gs://, the bucket is checked first (so a typo fails before a
    long export), a temporary directory is yielded, and its contents are uploaded when the block exits
    without an exception; the temporary directory is removed either way.
    """
    if not is_gcs(output_dir):
        yield output_dir
        return
    _check_bucket(_client(), output_dir, flag)
    scratch = tempfile.mkdtemp(prefix="export-")
    try:
        yield scratch
        upload_dir(scratch, output_dir, flag)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
