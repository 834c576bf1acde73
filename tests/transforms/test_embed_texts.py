"""The public Beam API: EmbedTexts gives users' own pipelines what the command line computes."""

import re
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

import runtime
from transforms.embed import EmbedTexts

ROOT = Path(__file__).resolve().parents[2]
README_MODEL = "out/models/all-MiniLM-L6-v2"


def _equal_vectors(expected: dict):
    def check(actual):
        assert sorted(map(repr, dict(actual))) == sorted(map(repr, expected)), actual
        for key, vector in actual:
            np.testing.assert_array_equal(vector, expected[key])
    return check


def test_vectors_are_the_engines_for_any_key_and_pairs(tiny_model_dir):
    engine = runtime.load(tiny_model_dir + "/encoder", tiny_model_dir + "/preprocessor", pooling="mean",
                          normalize=True)
    single = engine.embed([("the cat sat",), ("hello world",)]).embeddings
    pair = engine.embed([("the cat", "sat down")]).embeddings
    with beam.Pipeline(runner="FnApiRunner", options=PipelineOptions([])) as pipeline:
        vectors, failures = (pipeline | "Texts" >> beam.Create([(7, "the cat sat"), (("doc", 2), "hello world")])
                             | "EmbedTexts" >> EmbedTexts(model_dir=tiny_model_dir, pooling="mean", normalize=True))
        assert_that(vectors, _equal_vectors({7: single[0].vector, ("doc", 2): single[1].vector}), label="Vectors")
        assert_that(failures, equal_to([]), label="NoFailures")
        pair_vectors, _ = (pipeline | "Pairs" >> beam.Create([("pair", ("the cat", "sat down"))])
                           | "EmbedPairs" >> EmbedTexts(model_dir=tiny_model_dir, pooling="mean", normalize=True))
        assert_that(pair_vectors, _equal_vectors({"pair": pair[0].vector}), label="PairVectors")


def test_settings_come_from_the_model_unless_given(tiny_model_dir):
    assert EmbedTexts(model_dir=tiny_model_dir).settings[:3] == ("pooled", False, 128)
    assert EmbedTexts(model_dir=tiny_model_dir, pooling="cls", seq_length=16).settings[:3] == ("cls", False, 16)
    with pytest.raises(ValueError, match="model_dir, or encoder and preprocessor"):
        EmbedTexts()


def test_the_documented_example_runs(tiny_model_dir, tmp_path):
    manual = (ROOT / "docs" / "running.md").read_text(encoding="utf-8")
    section = manual.split("## In your own Beam pipeline", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert README_MODEL in code
    script = tmp_path / "example.py"
    script.write_text(code.replace(README_MODEL, tiny_model_dir), encoding="utf-8")
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = sorted(line for line in out.stdout.splitlines() if line.startswith(("a ", "b ")))
    assert [line.split(" (")[0] for line in lines] == ["a", "b"] and all("(32,)" in line for line in lines), lines
