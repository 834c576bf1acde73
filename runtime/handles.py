"""Model handles: staging them from any filesystem, checking them before a run, and the model fingerprint."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import NamedTuple

from runtime.engine import POOLING_MODES
from runtime.files import LOCAL, FileInfo, Files

__all__ = ["SENTENCE_CONFIG_PATH", "resolve_handle", "stage_locally", "model_defaults", "check_models",
           "check_seq_length", "model_max_seq_length", "model_fingerprint", "embedding_dimension"]

# Written by model.export beside the encoder of a sentence-transformers checkpoint (model.export's
# SENTENCE_CONFIG_PATH; a test keeps the two equal): how the model's vectors are meant to be pooled.
SENTENCE_CONFIG_PATH = "assets.extra/sentence_embedding.json"
# Without a pooling or length given and none recorded by the model (model.export reads sentence-transformers' own).
DEFAULT_POOLING = "pooled"
DEFAULT_SEQ_LENGTH = 128
MAX_SEQ_LENGTH = 512  # Every BERT-family checkpoint's position table; a model's own limit is checked on load.


def resolve_handle(handle: str, *, files: Files = LOCAL) -> str:
    """Returns a path `tf.saved_model.load` can read: URLs through tensorflow_hub, other URIs (gs://...) staged
    locally through `files` (see stage_locally), local paths as they are."""
    if _is_url(handle):
        import tensorflow_hub as hub

        return hub.resolve(handle)
    if "://" in handle and not handle.startswith("file://"):
        return stage_locally(handle, files=files)
    return handle


def stage_locally(uri: str, *, files: Files = LOCAL) -> str:
    """Copies a SavedModel directory from any filesystem `files` reads (gs://...) to local disk, once per machine.

    TensorFlow's own gs:// support talks to a fixed endpoint, so models are read through `files` (Beam's
    FileSystems in a pipeline, which honour the Google client libraries' settings) into
    TMPDIR/staged_models/URI_HASH/VERSION, where VERSION hashes every file's path, size and modification time: a
    model re-exported to the same URI is staged afresh, an unchanged one is reused by every later call and
    process on the machine.

    One process copies while the others wait on a file lock; the copy is made in a scratch directory,
    checked against the listed sizes and renamed into place, so no process ever sees a half-written copy,
    even if a copier dies. The copier then removes older versions of the same URI and abandoned scratch
    directories. A process still loading a version that was just replaced fails to load and is retried.

    Args:
      uri: the SavedModel directory.
      files: reads `uri`.

    Returns:
      The local directory of the staged copy.

    Raises:
      ValueError: when no saved_model.pb lies directly under `uri`.
    """
    prefix = uri.rstrip("/") + "/"
    # Directory placeholders (zero-byte objects named like "dir/") hold no data.
    listed = [info for info in files.list(prefix) if not info.path.endswith("/")]
    if not any(info.path == prefix + "saved_model.pb" for info in listed):
        raise ValueError(f"{uri} is not a SavedModel directory: there is no {prefix}saved_model.pb.")
    # Plain tuples: the version hash of a listing stays what it was when Beam's FileMetadata were hashed.
    listing = sorted((info.path, info.size, info.mtime) for info in listed)
    home = os.path.join(tempfile.gettempdir(), "staged_models", hashlib.sha256(prefix.encode()).hexdigest()[:16])
    target = os.path.join(home, hashlib.sha256(repr(listing).encode()).hexdigest()[:16])
    if os.path.isfile(os.path.join(target, "saved_model.pb")):
        return target
    os.makedirs(home, exist_ok=True)
    with _exclusive_lock(os.path.join(home, ".lock")):
        if not os.path.isfile(os.path.join(target, "saved_model.pb")):
            _copy_into_place(files, listed, prefix, target)
            _remove_all_but(home, keep={os.path.basename(target), ".lock"})
            logging.info("Staged %s to %s", uri, target)
    return target


@contextlib.contextmanager
def _exclusive_lock(path: str):
    """Holds an exclusive flock on `path`; the kernel releases it if the process dies."""
    try:
        import fcntl
    except ImportError:  # Not POSIX: the atomic rename alone keeps copies whole.
        yield
        return
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _copy_into_place(files: Files, listed: list[FileInfo], prefix: str, target: str) -> None:
    """Copies the `listed` files under `prefix` to a scratch directory, then renames it to `target`."""
    home = os.path.dirname(target)
    scratch = tempfile.mkdtemp(dir=home, prefix=".staging-")
    try:
        for info in listed:
            relative = os.path.normpath(info.path[len(prefix):])
            if os.path.isabs(relative) or relative == ".." or relative.startswith(".." + os.sep):
                raise ValueError(f"Refusing to stage {info.path}: it points outside {prefix}.")
            destination = os.path.join(scratch, relative)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            # Files.open reads as stored: an asset named *.gz is copied as is, not inflated.
            with files.open(info.path) as source, open(destination, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            if os.path.getsize(destination) != info.size:
                raise OSError(f"Staging {info.path} copied {os.path.getsize(destination)} bytes of "
                              f"{info.size}; did it change while being read?")
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    try:
        os.rename(scratch, target)
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
        if not os.path.isfile(os.path.join(target, "saved_model.pb")):
            raise
        # Else a stager that took no lock (a non-POSIX system) renamed its complete copy first.


def _remove_all_but(home: str, keep: set[str]) -> None:
    """Removes older staged versions and abandoned scratch directories (best effort)."""
    for name in os.listdir(home):
        if name not in keep:
            shutil.rmtree(os.path.join(home, name), ignore_errors=True)


def _is_url(handle: str) -> bool:
    """Whether `handle` is an http(s) URL (a TF Hub model), which only tensorflow_hub reads."""
    return handle.startswith(("http://", "https://"))


def _read_bytes(files: Files, path: str) -> bytes | None:
    """The file at `path`, or None where there is none."""
    if not files.exists(path):
        return None
    return files.read(path)


def model_defaults(encoder: str, *, files: Files = LOCAL) -> dict:
    """What the encoder's exporter recorded of its use: {"pooling", "normalize", "max_seq_length"}, maybe empty.

    model.export writes it for sentence-transformers checkpoints (e.g. mean pooling and L2 normalisation for
    all-MiniLM-L6-v2); other SavedModels and TF Hub URLs have none.

    Args:
      encoder: the encoder handle.
      files: reads it.

    Raises:
      ValueError: when the recorded file is not valid JSON.
    """
    if _is_url(encoder):
        return {}
    raw = _read_bytes(files, encoder.rstrip("/") + "/" + SENTENCE_CONFIG_PATH)
    if raw is None:
        return {}
    try:
        recorded = json.loads(raw.decode("utf-8"))
    except ValueError as err:
        raise ValueError(f"--encoder {encoder}: {SENTENCE_CONFIG_PATH} is not valid JSON ({err}); re-export "
                         "the model with model.export.") from err
    defaults = {}
    if recorded.get("pooling") in POOLING_MODES:
        defaults["pooling"] = recorded["pooling"]
    if isinstance(recorded.get("normalize"), bool):
        defaults["normalize"] = recorded["normalize"]
    if isinstance(recorded.get("max_seq_length"), int):
        defaults["max_seq_length"] = recorded["max_seq_length"]
    prompts = recorded.get("prompts")
    if isinstance(prompts, dict) and prompts:
        defaults["prompts"] = {name: text for name, text in prompts.items() if isinstance(text, str)}
        if recorded.get("default_prompt_name") in defaults["prompts"]:
            defaults["default_prompt_name"] = recorded["default_prompt_name"]
    return defaults


class Prompt(NamedTuple):
    """The text prepended to every input before tokenizing ("" for none), and where it came from, for the user."""

    text: str
    note: str


def resolve_prompt(encoder: str, *, prompt_name: str | None = None, prompt: str | None = None,
                   files: Files = LOCAL) -> Prompt:
    """The prompt of a run, as sentence-transformers' encode(prompt_name=..., prompt=...) picks it: `prompt` as
    given, else the model's prompt named `prompt_name`, else the model's default_prompt_name's, else none.

    Raises:
      ValueError: naming --prompt or --prompt_name: both given, or a name the model does not declare.
    """
    if prompt is not None and prompt_name is not None:
        raise ValueError("--prompt and --prompt_name both name the prompt: pass one of them.")
    if prompt is not None:
        return Prompt(prompt, f"prompt {prompt!r} (flag)")
    recorded = model_defaults(encoder, files=files)
    prompts = recorded.get("prompts", {})
    if prompt_name is not None:
        if prompt_name not in prompts:
            known = ", ".join(sorted(prompts)) or "none"
            raise ValueError(f"--prompt_name {prompt_name}: the model declares no such prompt (its prompts: "
                             f"{known}); pass --prompt TEXT for another prefix.")
        return Prompt(prompts[prompt_name], f"prompt {prompt_name} = {prompts[prompt_name]!r} (flag)")
    name = recorded.get("default_prompt_name")
    if name:
        return Prompt(prompts[name], f"prompt {name} = {prompts[name]!r} (model default)")
    return Prompt("", "no prompt")


class Settings(NamedTuple):
    """How an encoder's vectors are made, and where each setting came from ("flag", "model" or "default")."""

    pooling: str
    normalize: bool
    seq_length: int
    note: str  # e.g. "pooling mean (model), normalize True (model), seq_length 128 (flag)".


def resolve_settings(encoder: str, *, pooling: str | None = None, normalize: bool | None = None,
                     seq_length: int | None = None, chunking_seq_length: int | None = None,
                     files: Files = LOCAL) -> Settings:
    """Pooling, normalisation and the longest input: each as given, else the model's own (model_defaults),
    else the default. Warns when a given setting overrides the model's own (its vectors then differ from
    sentence-transformers'). `chunking_seq_length`, when chunking picks the longest input, replaces the model's
    own and the default (source "chunking")."""
    recorded = model_defaults(encoder, files=files)
    recorded_seq_length = recorded.get("max_seq_length")
    if recorded_seq_length is not None:
        recorded_seq_length = min(recorded_seq_length, MAX_SEQ_LENGTH)
    chosen = {}
    if seq_length is None and chunking_seq_length is not None:
        seq_length_source = "chunking"
        seq_length = chunking_seq_length
    else:
        seq_length_source = "flag"
    for name, given, own, default in (("pooling", pooling, recorded.get("pooling"), DEFAULT_POOLING),
                                      ("normalize", normalize, recorded.get("normalize"), False),
                                      ("seq_length", seq_length, recorded_seq_length, DEFAULT_SEQ_LENGTH)):
        if given is not None:
            chosen[name] = (given, seq_length_source if name == "seq_length" else "flag")
            if own is not None and given != own and name != "seq_length":
                logging.warning("--%s %s overrides the model's own setting (%s): its vectors will differ from "
                                "sentence-transformers'.", name, given, own)
        else:
            chosen[name] = (own, "model") if own is not None else (default, "default")
    note = ", ".join(f"{name} {value} ({source})" for name, (value, source) in chosen.items())
    return Settings(chosen["pooling"][0], chosen["normalize"][0], chosen["seq_length"][0], note)


def check_models(encoder: str, preprocessor: str, *, files: Files = LOCAL) -> None:
    """Fails fast, before a pipeline starts, on model handles that cannot work.

    Checks that local and gs:// handles are SavedModel directories and, when both carry their WordPiece
    vocabulary as an asset (as model.export writes them), that the vocabularies are the same. URL handles
    are checked when workers load them.

    Args:
      encoder: the encoder handle.
      preprocessor: the preprocessor handle.
      files: reads both.

    Raises:
      ValueError: naming the flag (--encoder or --preprocessor) of a handle that cannot work.
    """
    for flag, handle in (("--encoder", encoder), ("--preprocessor", preprocessor)):
        if _is_url(handle):
            continue
        if not files.exists(handle.rstrip("/") + "/saved_model.pb"):
            what = "does not exist" if not files.exists(handle) else "is not a SavedModel (no saved_model.pb)"
            raise ValueError(f"{flag} {handle} {what}.")
    if _is_url(encoder) or _is_url(preprocessor):
        return
    encoder_vocab = _read_bytes(files, encoder.rstrip("/") + "/assets/vocab.txt")
    preprocessor_vocab = _read_bytes(files, preprocessor.rstrip("/") + "/assets/vocab.txt")
    if encoder_vocab is not None and preprocessor_vocab is not None and encoder_vocab != preprocessor_vocab:
        sizes = f"{len(encoder_vocab.splitlines())} vs {len(preprocessor_vocab.splitlines())} tokens"
        raise ValueError(f"--encoder {encoder} and --preprocessor {preprocessor} use different vocabularies "
                         f"({sizes}); export both from the same checkpoint.")


def check_seq_length(preprocessor: str, seq_length: int, *, files: Files = LOCAL) -> None:
    """Refuses a --seq_length beyond what the preprocessor packs (its `max_seq_length`, as model.export writes).

    Reads the attribute's value from the SavedModel's variables without loading its graph (a load takes seconds,
    and the workers load the preprocessor anyway); handles without that attribute are not checked.

    Args:
      preprocessor: the preprocessor handle.
      seq_length: the longest packed input asked for.
      files: reads the handle (staged through it when not local).

    Raises:
      ValueError: when `seq_length` exceeds the preprocessor's max_seq_length.
    """
    limit = model_max_seq_length(preprocessor, files=files)
    if limit is not None and seq_length > limit:
        raise ValueError(f"--seq_length {seq_length} exceeds the longest input the model takes "
                         f"({limit} tokens, --preprocessor {preprocessor}).")


def model_max_seq_length(preprocessor: str, *, files: Files = LOCAL) -> int | None:
    """The longest input the preprocessor packs (its `max_seq_length`, as model.export writes it), or None for
    URL handles and preprocessors without that attribute; read from its variables, without loading its graph."""
    if _is_url(preprocessor):
        return None
    limit = _root_variable(resolve_handle(preprocessor, files=files), "max_seq_length")
    return None if limit is None else int(limit)


def _root_variable(saved_model_dir: str, name: str):
    """The value of the variable `name` held by a local SavedModel's root object, read from its variables
    checkpoint (where the root's attribute NAME is saved as NAME/.ATTRIBUTES/VARIABLE_VALUE); None when there is
    no such variable."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(os.path.join(saved_model_dir, "variables", "variables"))
    except (tf.errors.NotFoundError, ValueError):  # A SavedModel without variables.
        return None
    key = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
    return reader.get_tensor(key) if reader.has_tensor(key) else None


def model_fingerprint(encoder: str, preprocessor: str, pooling: str, normalize: bool, seq_length: int,
                      precision: str = "fp32", *, chunking: str | None = None, prompt: str = "",
                      files: Files = LOCAL) -> str:
    """A short hash naming what made an embedding: both models' graphs and weights index, pooling, length.

    For local and gs:// handles it hashes saved_model.pb and variables/variables.index (whose entries carry
    each tensor's checksum); for URLs, the URL itself. A reduced precision changes the hash; fp32 adds nothing,
    so fingerprints from before the precision option stay valid.

    Args:
      encoder: the encoder handle.
      preprocessor: the preprocessor handle.
      pooling: one of POOLING_MODES.
      normalize: whether vectors are L2-normalised.
      seq_length: the longest packed input.
      precision: one of runtime.PRECISIONS.
      chunking: how documents are cut into chunks (ChunkSettings.describe()), or None for whole records
        (which adds nothing, as fp32 does).
      prompt: the text prepended to every input; "" adds nothing.
      files: reads both handles.

    Returns:
      16 hexadecimal digits.
    """
    digest = hashlib.sha256()
    for handle in (encoder, preprocessor):
        digest.update(handle.encode() if _is_url(handle) else b"")
        for name in ("saved_model.pb", "variables/variables.index"):
            if not _is_url(handle):
                digest.update(_read_bytes(files, handle.rstrip("/") + "/" + name) or b"")
    digest.update(f"pooling={pooling};normalize={normalize};seq_length={seq_length}".encode())
    if precision != "fp32":
        digest.update(f";precision={precision}".encode())
    if chunking:
        digest.update(f";{chunking}".encode())
    if prompt:
        digest.update(f";prompt={json.dumps(prompt)}".encode())
    return digest.hexdigest()[:16]


def embedding_dimension(encoder: str, *, files: Files = LOCAL) -> int:
    """The length of the encoder's vectors, read from its serving signature (`pooled_output`, else the last axis
    of `sequence_output`) without loading its weights. Typed sinks need it before the run (a pgvector column's
    dimension, a Parquet fixed-size list).

    Raises:
      ValueError: naming --encoder, when the signature does not state it.
    """
    from tensorflow.python.saved_model import loader_impl

    saved_model = loader_impl.parse_saved_model(resolve_handle(encoder, files=files))
    for meta_graph in saved_model.meta_graphs:
        signature = meta_graph.signature_def.get("serving_default")
        if signature is None:
            continue
        for name in ("pooled_output", "sequence_output"):
            if name in signature.outputs:
                dims = signature.outputs[name].tensor_shape.dim
                if dims and dims[-1].size > 0:
                    return int(dims[-1].size)
    raise ValueError(f"--encoder {encoder}: its serving signature states no vector length (no pooled_output or "
                     "sequence_output of known size); export it with model.export.")
