"""Progress: records done of the estimated total, rate and time left; the estimate from the input's bytes."""

import gzip
import json
import logging

from transforms import preflight, progress


def test_progress_line_gives_share_rate_and_time_left():
    assert progress.progress_line(1200, 20000, 30.0) == (
        "Embedded 1,200 of about 20,000 records (6%), 40.0 records/s, about 8 min left")
    assert progress.progress_line(50, None, 10.0) == "Embedded 50 records, 5.0 records/s"
    # An estimate that fell short never shows more than 100% or a negative time left.
    assert progress.progress_line(120, 100, 10.0) == "Embedded 120 of about 120 records (100%), 12.0 records/s"


def test_report_progress_logs_periodically_where_stderr_is_no_terminal(caplog):
    caplog.set_level(logging.INFO)
    now = [100.0]
    reporter = progress.ReportProgress(total=1000, clock=lambda: now[0])
    reporter.setup()
    reporter._terminal, reporter._every = False, 30.0
    for _ in range(40):
        now[0] += 1.0  # One record a second: the first at 101, the 31st 30 s later.
        list(reporter.process("x"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Embedded")]
    assert lines == ["Embedded 31 of about 1,000 records (3%), 1.0 records/s, about 16 min left."]


def test_the_total_is_estimated_from_the_bytes_and_unknown_when_compressed(tmp_path):
    lines = [json.dumps({"id": i, "text": "the cat sat on the mat"}) + "\n" for i in range(1000)]
    (tmp_path / "a.jsonl").write_text("".join(lines[:600]))
    (tmp_path / "b.jsonl").write_text("".join(lines[600:]))
    estimate = preflight.estimate_records([str(tmp_path / "*.jsonl")], "jsonl")
    assert 950 <= estimate <= 1050
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.writelines(lines)
    assert preflight.estimate_records([str(tmp_path / "c.jsonl.gz")], "jsonl") is None


def test_the_total_is_estimated_from_the_whole_file_not_its_first_lines(tmp_path):
    """A corpus sorted by length: its first records are the shortest, so they alone would overestimate."""
    lines = [json.dumps({"id": i, "text": "word " * (1 + i // 200)}) + "\n" for i in range(20000)]
    (tmp_path / "sorted.jsonl").write_text("".join(lines))
    estimate = preflight.estimate_records([str(tmp_path / "sorted.jsonl")], "jsonl")
    assert 17000 <= estimate <= 23000, estimate
