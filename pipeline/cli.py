"""The command line of python -m pipeline.run: argv, logging, exit codes and the process's end.

pipeline.run builds and runs a pipeline and raises; this module turns that into what a user meets: --help, one
`error:` line for a mistake (exit 2) or a failed run (exit 1, the traceback kept in a file), 130 for Ctrl-C, and
a summary line. Flags are checked before TensorFlow is imported (a mistake costs no more than --help), which is
also why the imports of runtime and transforms sit inside functions here.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import urllib.error
import warnings

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline import run as run_lib
from pipeline.options import LOCAL_RUNNERS, UsageError, check_argv, options_parser

__all__ = ["help_parser", "main", "exit_process"]

_NOISY_LOGGERS = ("apache_beam", "absl", "tensorflow", "google", "urllib3", "h5py")

_EPILOG = """\
Beam's own pipeline options are accepted beside these: --runner (default DirectRunner), --direct_num_workers,
--direct_running_mode, --project, --region, --temp_location, ... (see Beam's documentation).
Exit codes: 0 done; 1 the run failed (bad data past --max_failed_fraction, a refused deletion, an I/O or
model error); 2 a usage error (a flag, its value, or what it names); 130 interrupted.

Example: python -m pipeline.run --input corpus/*.jsonl --model_dir models/minilm --output_tfrecord out/emb"""


_USAGE = ("python -m pipeline.run --input PATTERN (--output_tfrecord PREFIX | --output_bigquery TABLE | "
          "--output_parquet PREFIX | --output_vertex FOLDER | --output_postgres URI --postgres_table TABLE) "
          "[--output_failed PREFIX] [options] [--verbose]")


def help_parser():
    """The parser behind --help: the pipeline's own options, described, without Beam's; and --verbose, which only
    the command line reads."""
    parser = options_parser(description=run_lib.__doc__.split("\n\n")[1], beam_options=False, epilog=_EPILOG,
                            usage=_USAGE)
    parser.add_argument_group("Command line").add_argument(
        "--verbose", action="store_true",
        help="Show every log line (TensorFlow's and Beam's too) and the traceback of a failure. Default: off.")
    return parser


def _quiet(verbose: bool) -> None:
    """Our INFO lines only; TensorFlow's and Beam's start-up chatter (e.g. "failed call to cuInit") with --verbose."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.CRITICAL)
    if not verbose:
        warnings.filterwarnings("ignore", category=UserWarning, module="tensorflow_hub")
        for handler in logging.getLogger().handlers:
            handler.addFilter(_drop_known_noise)


# Warnings that say nothing to a user: Beam 2.77's RunInference cannot import its model manager, then logs this
# once per batch of metrics on Linux too.
_KNOWN_NOISE = ("Resource module is not available for current platform",)


def _drop_known_noise(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_KNOWN_NOISE)


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow and finds its devices with the process's stderr closed: its C++ start-up lines ("Could
    not find cuda drivers", absl's "All log messages before absl::InitializeLog()", "failed call to cuInit")
    ignore TF_CPP_MIN_LOG_LEVEL. An import error still raises as usual."""
    if "tensorflow" in sys.modules:
        return
    stderr = 2  # The process's own, which TensorFlow's C++ code writes to, whatever sys.stderr is now.
    saved = os.dup(stderr)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stderr)
        from runtime import import_tensorflow

        tf = import_tensorflow()

        tf.config.list_physical_devices("GPU")  # Device discovery logs "failed call to cuInit" on CPU machines.
    finally:
        os.dup2(saved, stderr)
        os.close(saved)
        os.close(devnull)


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception of a chain: Beam wraps a worker's error in its own."""
    seen = set()
    while id(err) not in seen and (err.__cause__ or err.__context__) is not None:
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return err


def _failure_line(err: BaseException) -> str:
    """One line for a failed run: our refusal as it is, else the innermost error's type and first line."""
    from transforms.guard import RunRefused

    for candidate in (err, _root_cause(err)):
        if isinstance(candidate, RunRefused):
            return str(candidate.args[0] if candidate.args else candidate).split(" [while running")[0].strip()
    text = f"{err}"
    marker = "RunRefused: "
    if marker in text:  # A refusal that crossed a process boundary as text.
        return text[text.index(marker) + len(marker):].splitlines()[0].split(" [while running")[0].strip()
    cause = _root_cause(err)
    message = (str(cause).strip().splitlines() or [""])[0][:500]
    message = f"{type(cause).__name__}: {message}" if message else type(cause).__name__
    if type(cause).__name__ == "DefaultCredentialsError":  # google.auth's, without importing it here.
        return (f"no Google Cloud credentials ({message[:200]}): run gcloud auth application-default login, or "
                "set GOOGLE_APPLICATION_CREDENTIALS to a service account key file")
    if isinstance(cause, (ConnectionError, TimeoutError, socket.gaierror, urllib.error.URLError)):
        return (f"a network error ({message}). Model URLs (TF Hub handles, the default --encoder and "
                "--preprocessor) must be reachable from every worker; offline, export a model with model.export "
                "and pass --model_dir")
    return message


def _save_traceback() -> str:
    """Writes the current exception's traceback to a log file; returns its path."""
    import tempfile
    import traceback

    with tempfile.NamedTemporaryFile("w", prefix="pipeline-run-", suffix=".log", delete=False) as log:
        traceback.print_exc(file=log)
    return log.name


def _check_flags(argv: list[str]) -> None:
    """The checks that need only the command line (unknown flags, bad values, required flags); UsageError."""
    from pipeline.plan import check_flags

    check_argv(argv)
    try:
        check_flags(PipelineOptions(argv))
    except ValueError as err:
        raise UsageError(str(err)) from err


def _is_interrupt(err: BaseException) -> bool:
    """Whether a run's failure is a KeyboardInterrupt, raised here or in a runner's worker thread or process."""
    return isinstance(_root_cause(err), KeyboardInterrupt) or "KeyboardInterrupt" in str(err)


def _interrupted() -> int:
    print("interrupted: nothing was committed (no manifest, no MERGE); rerun the same command to start again.",
          file=sys.stderr)
    return 130


def main(argv=None) -> int:
    """The command line: exit 0 done, 1 failed run, 2 usage error, 130 interrupted (see --help)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [arg for arg in argv if arg != "--verbose"]
    _quiet(verbose)
    if not argv or "-h" in argv or "--help" in argv:
        help_parser().print_help()
        return 0
    try:
        _check_flags(argv)  # Before TensorFlow's import: a mistyped flag costs no more than --help.
        if not verbose:
            _import_tensorflow_quietly()
        options, plan = run_lib.prepare(argv)
        result = run_lib.launch(options, plan)
        if options.view_as(StandardOptions).runner in LOCAL_RUNNERS:
            print(run_lib.summarize(run_lib.counters(result), plan))
    except UsageError as err:
        print(f"error: {err} (see python -m pipeline.run --help)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as err:  # noqa: BLE001  Every failure of a run becomes one line; the traceback is kept.
        if _is_interrupt(err):  # Ctrl-C inside a Beam stage reaches us wrapped in the runner's own error.
            return _interrupted()
        if verbose:
            import traceback

            traceback.print_exc()
        where = "above" if verbose else f"in {_save_traceback()}"
        print(f"error: the run failed: {_failure_line(err)} (traceback {where})", file=sys.stderr)
        return 1
    return 0


def exit_process(code: int) -> None:
    """Ends the command-line process with `code` once its exit handlers have run and its output is flushed,
    skipping the interpreter's teardown: freeing a loaded model's graphs and TensorFlow's state object by object
    takes seconds (see BENCHMARKS.md) and does nothing for a process that is done. For `python -m` only: code
    that calls main() keeps its process."""
    import atexit

    atexit._run_exitfuncs()  # Beam's (shared-model servers, job servers) and logging's own flush.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
