"""The Embed transform: keyed results, failed batches into dead letters, one model copy per machine."""

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import embed


class _FailingHandler(embed.EmbeddingModelHandler):
    """Raises on any batch that holds the text BOOM, like a model that chokes on one input."""

    def run_inference(self, batch, model, inference_args=None):
        if any("BOOM" in texts for texts in batch):
            raise RuntimeError("the model choked")
        return super().run_inference(batch, model, inference_args)


def test_a_failing_batch_becomes_dead_letters_and_the_rest_is_embedded(tiny_model_dir):
    handler = _FailingHandler(tiny_model_dir + "/encoder", tiny_model_dir + "/preprocessor", max_batch_size=1)
    keyed = [(("ok1", "h1", "src"), ("the cat sat",)), (("bad", "h2", "src"), ("BOOM",)),
             (("ok2", "h3", "src"), ("a dog ran",))]
    pipeline = TestPipeline(runner="FnApiRunner")
    embedded, failed = pipeline | beam.Create(keyed) | embed.Embed(handler)
    assert_that(embedded | "EmbeddedIds" >> beam.Map(lambda kv: kv[0][0]), equal_to(["ok1", "ok2"]), label="good")
    assert_that(failed | "FailedIds" >> beam.Map(lambda f: (f[0][0], f[1], "choked" in f[2])),
                equal_to([("bad", ("BOOM",), True)]), label="bad")
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace("embeddings").with_name("failed_inference_error"))
    assert sum(c.committed for c in counters["counters"]) == 1


def test_one_shared_model_copy_per_machine_gives_the_same_embeddings(tiny_model_dir):
    texts = ["the cat sat on the mat", "Hello World", "a dog ran and the cat sat on the mat ."]
    shared = embed.EmbeddingModelHandler(tiny_model_dir + "/encoder", tiny_model_dir + "/preprocessor",
                                         large_model=True)
    assert shared.share_model_across_processes()
    pipeline = TestPipeline(runner="FnApiRunner")
    keyed = [((f"id{i}", "h", "s"), (text,)) for i, text in enumerate(texts)]
    embedded, _ = pipeline | beam.Create(keyed) | embed.Embed(shared)
    vectors = embedded | beam.Map(lambda kv: (kv[0][0], kv[1].vector))
    reference = embed.EmbeddingModelHandler(tiny_model_dir + "/encoder", tiny_model_dir + "/preprocessor").load_model()
    expected = {f"id{i}": reference.embed([(text,)]).embeddings[0].vector for i, text in enumerate(texts)}

    def matches_reference(actual):
        assert sorted(key for key, _ in actual) == sorted(expected)
        for key, vector in actual:
            np.testing.assert_allclose(vector, expected[key], atol=1e-5)

    assert_that(vectors, matches_reference)
    pipeline.run().wait_until_finish()
