"""Tests that the exported preprocessor tokenizes long texts in memory linear in their length, and truncates them."""

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest

from model import preprocessor

# Extra peak RSS allowed for tokenizing the 1 MB text (5 times that for 5 MB). Linear code takes about 40 MB
# cased, 55 MB uncased (the int32 code points of lowercasing), 185 MB for 5 MB; the quadratic code it replaced
# gathered the whole text once per wordpiece, about 190 GB here (+2.1 GB for 100 kB already).
_MAX_EXTRA_MB = 200
# Where the measuring process gives up, long before the quadratic code would exhaust the machine.
_RUNAWAY_MB = 2000
_SEQ_LENGTH = 128

# (word, its number of wordpieces in either casing with the conftest tiny vocab, relative frequency)
_WORDS = [("the", 1, 20), ("cat", 1, 20), ("Hello", 1, 5), ("world", 1, 10), ("unbelievable", 3, 5),
          ("playing", 2, 5), ("books", 2, 5), ("dog,", 2, 5), ("mat.", 2, 5), ("zorblax", 1, 10), ("Qwerty!?", 3, 3),
          ("x" * 150, 1, 1)]

# Runs in a fresh interpreter, so that its peak RSS is that of tokenizing alone. The peak is reset before each
# measurement (Linux's clear_refs), and a watchdog ends the process before a runaway one exhausts the machine.
_SCRIPT = textwrap.dedent("""
    import json, os, sys, threading, time
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    path, big_file, huge_file, head_file, seq_length, runaway_mb = sys.argv[1:7]
    big, huge, head = (open(name, encoding="utf-8").read() for name in (big_file, huge_file, head_file))

    def status_mb(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field))

    def peak_mb(name, function):
        global stage
        stage = name
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        start = status_mb("VmHWM:")
        result = function()
        return status_mb("VmHWM:") - start, result

    def watchdog():
        while True:
            if status_mb("VmRSS:") - baseline > float(runaway_mb):
                print(json.dumps({"runaway_mb": status_mb("VmRSS:") - baseline, "stage": stage}), flush=True)
                os._exit(3)
            time.sleep(0.005)

    loaded = tf.saved_model.load(path)
    count = lambda text: int(tf.size(loaded.tokenize(tf.constant([text])).flat_values))
    count("the cat sat")  # Traces and warms up.
    baseline, stage = status_mb("VmRSS:"), "load"
    threading.Thread(target=watchdog, daemon=True).start()
    tiny_mb, _ = peak_mb("tiny", lambda: count("the cat sat"))
    big_mb, big_count = peak_mb("big", lambda: count(big))
    huge_mb, packed = peak_mb("huge", lambda: loaded.bert_pack_inputs(
        [loaded.tokenize(tf.constant([huge]))], seq_length=int(seq_length)))
    head_ids = loaded.tokenize(tf.constant([head])).flat_values.numpy().tolist()
    print(json.dumps({"tiny_mb": tiny_mb, "big_mb": big_mb, "big_count": big_count, "huge_mb": huge_mb,
                      "head_ids": head_ids, **{key: value.numpy().tolist() for key, value in packed.items()}}))
""")


def _text(num_chars: int, seed: int) -> tuple[str, int]:
    """A text of about num_chars characters from _WORDS between special tokens, and its number of wordpieces."""
    rng = random.Random(seed)
    words, length = [], 0
    while length < num_chars:
        words.append(rng.choices(_WORDS, [weight for _, _, weight in _WORDS])[0])
        length += len(words[-1][0]) + 1
    # Special tokens only at the ends: the quadratic code copied a text between them once per wordpiece.
    text = "[CLS] " + " ".join(word for word, _, _ in words) + " [SEP] the end [MASK]"
    return text, 1 + sum(count for _, count, _ in words) + 4


@pytest.fixture(scope="module")
def measured(tmp_path_factory, tiny_model_dir, tiny_vocab_file):
    """Runs _SCRIPT on the tiny model's preprocessor (cased); returns its results and the expected values."""
    if not sys.platform.startswith("linux"):
        pytest.skip("measures peak RSS through /proc/self")
    tmp = tmp_path_factory.mktemp("memory")
    big, big_count = _text(1_000_000, seed=1)
    huge, _ = _text(5_000_000, seed=2)
    head = " ".join(huge.split(" ")[:200])
    files = []
    for name, content in [("big", big), ("huge", huge), ("head", head)]:
        (tmp / name).write_text(content, encoding="utf-8")
        files.append(str(tmp / name))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    completed = subprocess.run(
        [sys.executable, "-c", _SCRIPT, os.path.join(tiny_model_dir, "preprocessor"), *files, str(_SEQ_LENGTH),
         str(_RUNAWAY_MB)], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stdout[-1000:] + completed.stderr[-3000:]
    vocab = preprocessor.read_vocab(tiny_vocab_file)
    return {**json.loads(completed.stdout.strip().splitlines()[-1]), "expected_count": big_count,
            "cls": vocab.index("[CLS]"), "sep": vocab.index("[SEP]")}


def test_one_megabyte_text_tokenizes_in_bounded_memory(measured):
    assert measured["big_count"] == measured["expected_count"]
    assert measured["big_count"] > 150_000  # Not vacuous: every word of the text was tokenized.
    assert measured["big_mb"] - measured["tiny_mb"] < _MAX_EXTRA_MB, measured


def test_five_megabyte_text_truncates_to_its_first_wordpieces(measured):
    assert len(measured["head_ids"]) > _SEQ_LENGTH
    assert measured["input_word_ids"] == [[measured["cls"], *measured["head_ids"][:_SEQ_LENGTH - 2], measured["sep"]]]
    assert measured["input_mask"] == [[1] * _SEQ_LENGTH]
    assert measured["input_type_ids"] == [[0] * _SEQ_LENGTH]
    assert measured["huge_mb"] < 5 * _MAX_EXTRA_MB
