"""Writes templates/metadata.json from pipeline.options.EmbeddingOptions: `python -m templates.generate_metadata`.

Every option of EmbeddingOptions becomes a Flex Template parameter: its flag name, a label made from that name,
its help text (plus its default), whether it may be left out, and a regex where the format is known: from the
option itself (choices, flags, positive integers) or, for paths and names, from the table below. Run it after
changing an option; tests/templates/test_templates.py fails while the checked-in file differs. `--check` only compares.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from pipeline.options import option_actions

__all__ = ["METADATA_PATH", "REQUIRED", "PATTERNS", "parameters", "metadata", "render", "main"]

METADATA_PATH = pathlib.Path(__file__).with_name("metadata.json")

# What pipeline.run.validate refuses to run without (an output too, but either output_tfrecord or output_bigquery).
REQUIRED = ("input",)

_GCS_PATH = r"^gs://[^\n\r]+$"
# PROJECT:DATASET.TABLE or PROJECT.DATASET.TABLE, as transforms/bigquery.py's parse_table accepts them.
_TABLE = r"(([a-z0-9.-]+:)?[a-z][a-z0-9-]*[a-z0-9])[:.][A-Za-z0-9_]{1,1024}\.[\w-]{1,1024}"
# Formats the options cannot state themselves. On Dataflow every path is read by workers or the launcher, never
# on this machine, so paths are gs:// (models included: workers do not download from the internet).
PATTERNS = {
    "input": r"^gs://[^,\n\r]+(\s*,\s*gs://[^,\n\r]+)*$",
    "pair_fields": r"^[^,\n\r]+,[^,\n\r]+$",
    "model_dir": _GCS_PATH,
    "encoder": _GCS_PATH,
    "preprocessor": _GCS_PATH,
    "output_tfrecord": _GCS_PATH,
    "output_failed": _GCS_PATH,
    # A TFRecord prefix on Cloud Storage, or a BigQuery table.
    "previous_output": rf"^(gs://[^\n\r]+|{_TABLE})$",
    "output_bigquery": rf"^{_TABLE}$",
    "run_id": r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    "output_parquet": _GCS_PATH,
    "output_vertex": _GCS_PATH,
    "output_postgres": r"^postgres(ql)?://[^\n\r]+$",
    "postgres_table": r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$",
}
_TYPE_PATTERNS = {"_positive_int": r"^[1-9][0-9]*$", "int": r"^-?[0-9]+$",
                  "_fraction": r"^(0(\.[0-9]+)?|1(\.0*)?|\.[0-9]+)$"}
_FLAG_PATTERN = r"^(true|false)$"
_LABEL_WORDS = {"id": "ID", "tfrecord": "TFRecord", "bigquery": "BigQuery", "seq": "Sequence", "dir": "directory",
                "parquet": "Parquet", "postgres": "PostgreSQL", "vertex": "Vertex AI"}

_NAME = "Embed a text corpus with DistilBERT/BERT"
_DESCRIPTION = ("Reads a corpus (text, JSONL, CSV, TSV or TFRecord files on Cloud Storage), embeds every record "
                "with an exported preprocessor + encoder SavedModel pair through RunInference, and writes the "
                "embeddings to TFRecord files, a BigQuery table, Parquet files, a Vertex AI Vector Search update "
                "and/or a PostgreSQL table with pgvector; records that cannot be embedded go to a dead-letter "
                "output. With previous_output, embeds only new and changed "
                "records.")


def _actions() -> list[argparse.Action]:
    return option_actions()


def _is_flag(action: argparse.Action) -> bool:
    return action.nargs == 0 and action.const is True


def _label(name: str) -> str:
    words = [_LABEL_WORDS.get(word, word) for word in name.split("_")]
    return " ".join([words[0][:1].upper() + words[0][1:]] + words[1:])


def _help_text(action: argparse.Action) -> str:
    text = " ".join(action.help.split())
    if _is_flag(action):
        return f"{text} true or false; default false."
    if action.default is not None and "Default" not in text:
        return f"{text} Default: {action.default}."
    return text


def _regexes(action: argparse.Action) -> list[str]:
    if _is_flag(action):
        return [_FLAG_PATTERN]
    if action.choices:
        return ["^(" + "|".join(action.choices) + ")$"]
    if action.dest in PATTERNS:
        return [PATTERNS[action.dest]]
    type_name = getattr(action.type, "__name__", None)
    return [_TYPE_PATTERNS[type_name]] if type_name in _TYPE_PATTERNS else []


def parameters() -> list[dict]:
    """One metadata parameter per EmbeddingOptions option, in declaration order."""
    result = []
    for action in _actions():
        parameter = {"name": action.dest, "label": _label(action.dest), "helpText": _help_text(action),
                     "isOptional": action.dest not in REQUIRED}
        regexes = _regexes(action)
        if regexes:
            parameter["regexes"] = regexes
        result.append(parameter)
    return result


def metadata() -> dict:
    """The Flex Template metadata (google.dataflow.v1beta3.TemplateMetadata as JSON)."""
    return {"name": _NAME, "description": _DESCRIPTION, "parameters": parameters()}


def render() -> str:
    return json.dumps(metadata(), indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Exit 1 if metadata.json is not up to date.")
    args = parser.parse_args(argv)
    text = render()
    current = METADATA_PATH.read_text(encoding="utf-8") if METADATA_PATH.exists() else None
    if args.check:
        if current != text:
            print(f"{METADATA_PATH} is out of date: run python -m templates.generate_metadata", file=sys.stderr)
            return 1
        return 0
    METADATA_PATH.write_text(text, encoding="utf-8")
    print(f"Wrote {len(metadata()['parameters'])} parameters to {METADATA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
