"""One suite, every sink: the same corpora and changes through the whole pipeline, each sink read back through
its own reader (transforms.sinks' `load`). A sink is done when it passes this file unchanged: the sinks come
from the run's plan, so a new one joins by being asked for in `_argv`.

The cases: ids that every store must hold exactly (quotes, backslashes, U+2028, emoji, spaces); ids and values
that some store cannot hold (dead letters, never a failed run); an incremental run with changed, deleted, added
and metadata-only records; and the result compared with a full run over the new corpus, per sink. BigQuery runs
against its emulator in tests/gcp.
"""

import json
import uuid

import numpy as np
import pytest

from pipeline import run as run_lib

# Ids every sink holds as they are; for each, a text and kept fields.
_SAFE_IDS = ['quote"\'', "back\\slash", "line\u2028sep", "emoji 🙂", " spaced ", "plain"]
_REFUSED = {"new\nline": "vertex", "cr\r": "vertex", "nul\u0000": "postgres", "long" + "x" * 9000: "postgres"}


def _record(record_id, text, lang="en", year=2001, score=0.5):
    return {"id": record_id, "text": text, "lang": lang, "year": year, "score": score}


def _write(path, records, extra_lines=()):
    path.write_text("".join(json.dumps(record) + "\n" for record in records) + "".join(extra_lines))
    return str(path)


def _argv(corpus, model_dir, root, table, postgres_uri, run_id, previous=True):
    argv = ["--runner=FnApiRunner", f"--input={corpus}", f"--model_dir={model_dir}", "--seq_length=32",
            f"--run_id={run_id}", f"--output_tfrecord={root}/run={{run_id}}/emb",
            "--keep_fields=lang,year,score", f"--output_parquet={root}/run={{run_id}}/parquet/emb",
            f"--output_vertex={root}/run={{run_id}}/vertex", "--vertex_restricts=lang",
            "--vertex_numeric_restricts=score", f"--output_postgres={postgres_uri}", f"--postgres_table={table}",
            "--max_failed_fraction=0.5"]
    return argv + ([f"--previous_output={root}/run={{latest}}/emb"] if previous else [])


def _run(argv):
    options, plan = run_lib.prepare(argv)
    run_lib.launch(options, plan)
    return plan


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, postgres_uri, synthetic_text):
    """A full run, an incremental run over an edited corpus, and a full run over the edited corpus elsewhere."""
    tmp = tmp_path_factory.mktemp("conformance")
    first = [_record(record_id, synthetic_text(i)) for i, record_id in enumerate(_SAFE_IDS + ["gone", "edited"])]
    refused = [json.dumps(_record(record_id, synthetic_text(20 + i))) + "\n" for i, record_id in enumerate(_REFUSED)]
    # NaN in a numeric restrict: Vertex cannot hold it; the others get it as a dead letter too (same ids everywhere).
    refused.append('{"id": "nan", "text": "the cat", "lang": "en", "year": 1, "score": NaN}\n')
    second = [record for record in first if record["id"] not in ("gone", "edited")]
    second = [{**record, "lang": "fr"} if record["id"] == "plain" else record for record in second]  # Fields only.
    second += [_record("edited", synthetic_text(40)), _record("added", synthetic_text(41))]
    table, reference_table = (f"emb_{uuid.uuid4().hex[:8]}" for _ in range(2))
    root = tmp / "out"
    plans = {
        "first": _run(_argv(_write(tmp / "a.jsonl", first, refused), tiny_model_dir, root, table, postgres_uri,
                            "r1")),
        "second": _run(_argv(_write(tmp / "b.jsonl", second, refused), tiny_model_dir, root, table, postgres_uri,
                             "r2")),
        "reference": _run(_argv(str(tmp / "b.jsonl"), tiny_model_dir, tmp / "full", reference_table, postgres_uri,
                                "r2", previous=False)),
    }
    return plans, {record["id"] for record in second}, root


def _sink_kinds():
    return ["TFRecordSink", "ParquetSink", "VertexSink", "PostgresSink"]


def _sink(plan, kind):
    (sink,) = [sink for sink in plan.sinks if type(sink).__name__ == kind]
    return sink


def _live(plans, kind) -> dict:
    """{id: vector} the store holds after both runs: the second run's output, or for an update sink the first
    one's points with the second's deletions and upserts applied, as the index applies them."""
    second = _sink(plans["second"], kind)
    loaded = second.load()
    current = dict(zip(loaded.ids, loaded.vectors, strict=True))
    if not second.changes_only:
        return current
    first = _sink(plans["first"], kind).load()
    live = dict(zip(first.ids, first.vectors, strict=True))
    for record_id in second.removed():
        live.pop(record_id, None)
    live.update(current)
    return live


@pytest.mark.parametrize("kind", _sink_kinds())
def test_after_an_incremental_run_every_sink_holds_what_a_full_run_holds(kind, runs):
    plans, corpus_ids, _ = runs
    assert kind in {type(sink).__name__ for sink in plans["second"].sinks}
    live = _live(plans, kind)
    full = _sink(plans["reference"], kind).load()
    reference = dict(zip(full.ids, full.vectors, strict=True))
    assert sorted(live) == sorted(reference) == sorted(corpus_ids)  # Each id once, none resurrected or lost.
    for record_id, vector in reference.items():
        np.testing.assert_allclose(live[record_id], vector, rtol=1e-6, atol=1e-7, err_msg=repr(record_id))


@pytest.mark.parametrize("kind", _sink_kinds())
def test_what_a_sink_cannot_hold_is_a_dead_letter_and_no_sink_gets_it(kind, runs):
    plans, _, root = runs
    for name, plan in (("first", plans["first"]), ("second", plans["second"])):
        ids = set(_sink(plan, kind).load().ids)
        assert not ids & (set(_REFUSED) | {"nan"}), name
    dead = [json.loads(line) for path in (root / "run=r2").glob("emb-failed-*.jsonl") for line in open(path)]
    assert sorted(json.loads(entry["record"])["id"] for entry in dead if len(entry["record"]) < 1000) == sorted(
        record_id for record_id in [*_REFUSED, "nan"] if len(record_id) < 900)
    assert {entry["reason"] for entry in dead} == {"unstorable_value"}
