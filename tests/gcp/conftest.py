"""GCS and BigQuery emulators on loopback for the tests in tests/gcp (installed into .emu by scripts/emulators.sh).

`gcp_emulators` starts gcp-storage-emulator and bqemulator once per session on free 127.0.0.1 ports, points the
Google client libraries at them through their own environment variables, and stops them at the end. Every
test here also runs with name resolution refused for anything but loopback, so a call that would reach a real
Google endpoint fails at once with a message instead of retrying for minutes.
"""

import ipaddress
import json
import os
import pathlib
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest
from apache_beam.utils.retry import PermanentException

REPO = pathlib.Path(__file__).resolve().parents[2]
EMU = REPO / ".emu"
PROJECT = "test-project"
_START_SECONDS = 60.0
# An authorized-user ADC whose token never expires: google.auth.default() returns at once and refreshes
# nothing. Without any ADC, Beam spends ~22 s per process looking for credentials, and its BigQuery client
# falls back to oauth2client's interactive browser flow and hangs.
_FAKE_ADC = {"type": "authorized_user", "client_id": "x", "client_secret": "x", "refresh_token": "x",
             "token": "fake", "expiry": "2099-01-01T00:00:00Z"}


class RealEndpointBlocked(PermanentException):
    """A test tried to reach a non-loopback host. A PermanentException, so Beam's retry helpers give up at
    once; the Google client libraries and apitools re-raise exceptions they do not know without retrying."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: pathlib.Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"


def _wait_ready(url: str, process: subprocess.Popen, log: pathlib.Path) -> None:
    deadline = time.monotonic() + _START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with code {process.returncode}:\n{_log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"not ready at {url} after {_START_SECONDS:.0f} s:\n{_log_tail(log)}")


def _start(name: str, argv_for_port, ready_url_for_port, log: pathlib.Path, env: dict) -> tuple:
    """Starts an emulator on a free port, trying new ports if another process took the first one meanwhile."""
    for attempt in range(3):
        port = _free_port()
        with open(log, "ab") as log_file:
            process = subprocess.Popen(argv_for_port(port), stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                       stdin=subprocess.DEVNULL)
        try:
            _wait_ready(ready_url_for_port(port), process, log)
            return process, port
        except RuntimeError as e:
            _stop(process)
            if attempt == 2:
                pytest.fail(f"{name} did not start: {e}")
    raise AssertionError("unreachable")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _check_installed() -> None:
    binaries = [EMU / "bin" / "gcp-storage-emulator", EMU / "bin" / "bqemulator"]
    if not list(EMU.glob(".installed-*")) or not all(b.exists() for b in binaries):
        pytest.fail("The GCS and BigQuery emulators are not installed in .emu: run `bash scripts/emulators.sh` "
                    "(scripts/test.sh does). If it failed, pip could not install gcp-storage-emulator, "
                    "bqemulator==1.4.0 or the DuckDB 1.5.5 extension wheels from the package index; these "
                    "tests need them.", pytrace=False)


def _storage_read_client(address: str):
    """A stand-in for BigQueryReadClient() that talks to `address` without TLS."""
    import grpc
    from google.cloud import bigquery_storage_v1
    from google.cloud.bigquery_storage_v1.services.big_query_read.transports import BigQueryReadGrpcTransport

    client_class = bigquery_storage_v1.BigQueryReadClient

    def make_client(*args, **kwargs):
        return client_class(transport=BigQueryReadGrpcTransport(channel=grpc.insecure_channel(address)))

    return make_client


@pytest.fixture(scope="session")
def fake_adc(tmp_path_factory) -> str:
    """The path of a throwaway credentials file (see _FAKE_ADC)."""
    adc = tmp_path_factory.mktemp("adc") / "adc.json"
    adc.write_text(json.dumps(_FAKE_ADC))
    return str(adc)


@pytest.fixture(scope="session")
def gcp_emulators(tmp_path_factory, fake_adc):
    """Starts both emulators and sets the environment the Google client libraries read.

    Yields a dict: gcs and bigquery (the emulators' base URLs) and project.
    """
    _check_installed()
    root = tmp_path_factory.mktemp("gcp")
    gcs_dir = root / "gcs"  # On disk, not in memory: bqemulator reads load-job files from here.
    gcs_dir.mkdir()
    scratch = root / "tmp"
    scratch.mkdir()
    env = dict(os.environ, HOME=str(EMU / "home"),  # Where scripts/emulators.sh installed the DuckDB extensions.
               BQEMU_GCS_LOCAL_ROOT=str(gcs_dir / ".cloudstorage"))  # gs://b/o -> ROOT/b/o for load jobs.
    processes = []
    mp = pytest.MonkeyPatch()
    try:
        gcs, gcs_port = _start(
            "gcp-storage-emulator",
            lambda port: [str(EMU / "bin" / "gcp-storage-emulator"), "-d", str(gcs_dir), "start",
                          "--host", "127.0.0.1", "--port", str(port), "-q"],
            lambda port: f"http://127.0.0.1:{port}/storage/v1/b", root / "gcs.log", env)
        processes.append(gcs)
        grpc_port = _free_port()
        bq, bq_port = _start(
            "bqemulator",
            lambda port: [str(EMU / "bin" / "bqemulator"), "start", "--rest-host", "127.0.0.1", "--rest-port",
                          str(port), "--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port),
                          "--project", PROJECT, "--log-level", "warning"],
            lambda port: f"http://127.0.0.1:{port}/bigquery/v2/projects/{PROJECT}/datasets",
            root / "bigquery.log", env)
        processes.append(bq)
        urls = {"gcs": f"http://127.0.0.1:{gcs_port}", "bigquery": f"http://127.0.0.1:{bq_port}", "project": PROJECT}
        mp.setenv("STORAGE_EMULATOR_HOST", urls["gcs"])
        mp.setenv("BIGQUERY_EMULATOR_HOST", urls["bigquery"])
        mp.setenv("GOOGLE_APPLICATION_CREDENTIALS", fake_adc)
        mp.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
        # Staged models and Beam's temporary files stay in this session's directory, away from other test
        # sessions on the machine that stage their own models under the same gs:// names.
        mp.setenv("TMPDIR", str(scratch))
        mp.setattr(tempfile, "tempdir", str(scratch))
        # Test-only: Beam's apitools BigQuery client (tables, datasets and load jobs: CREATE_IF_NEEDED and
        # FILE_LOADS) has its endpoint fixed in this class attribute; no environment variable or pipeline
        # option moves it. Only its insertAll client, google-cloud-bigquery, reads BIGQUERY_EMULATOR_HOST.
        # The attribute is read in this process, hence the in-process FnApiRunner in these tests.
        from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client

        mp.setattr(bigquery_v2_client.BigqueryV2, "BASE_URL", f"{urls['bigquery']}/bigquery/v2/")
        # Test-only, likewise: ReadFromBigQuery's DIRECT_READ builds its Storage Read API client with no arguments,
        # so it dials bigquerystorage.googleapis.com over TLS; no environment variable moves it. Point it at
        # bqemulator's gRPC port, in plain text.
        from google.cloud import bigquery_storage_v1

        mp.setattr(bigquery_storage_v1, "BigQueryReadClient", _storage_read_client(f"127.0.0.1:{grpc_port}"))
        yield urls
    finally:
        mp.undo()
        for process in processes:
            _stop(process)


_METADATA_HOSTS = ("metadata", "metadata.google.internal", "169.254.169.254")


def _is_loopback(host) -> bool:
    if host in (None, "", "localhost", b"localhost"):
        return True
    try:
        return ipaddress.ip_address(host.decode() if isinstance(host, bytes) else host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_real_endpoints(monkeypatch, fake_adc):
    """Refuses to resolve any host but loopback while a test here runs (subprocesses are not covered).

    Tests without the emulators get the throwaway credentials too: a call that would go to Google then fails
    at once here, rather than after Beam's ~22 s search for credentials.
    """
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", fake_adc)
    # Beam caches the credentials it found first in the process; make it look again, with the file above.
    from apache_beam.internal.gcp import auth

    monkeypatch.setattr(auth._Credentials, "_credentials_init", False)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)
    resolve = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host in _METADATA_HOSTS:
            # Beam asks the GCE metadata server for a Dataflow job id and takes a failed lookup, as offline,
            # to mean "not on Dataflow".
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not resolved in tests")
        if not _is_loopback(host):
            raise RealEndpointBlocked(f"test tried to reach {host!r}; only the emulators on 127.0.0.1 are "
                                      "allowed (is an emulator variable unset, or a client not pointed at it?)")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    yield


@pytest.fixture(scope="session")
def gcs(gcp_emulators):
    """A google-cloud-storage client of the emulator."""
    from google.cloud import storage

    return storage.Client(project=PROJECT)


@pytest.fixture(scope="session")
def bq(gcp_emulators):
    """A google-cloud-bigquery client of the emulator, with `rows(table)`: {id: row as a dict}, each id once."""
    from google.cloud import bigquery

    class Client(bigquery.Client):
        def rows(self, table: str) -> dict:
            from transforms import bigquery as bigquery_lib

            found = {}
            for row in self.list_rows(bigquery_lib.parse_table(table).table_id):
                assert row["id"] not in found, f"{row['id']} is in {table} twice"
                found[row["id"]] = dict(row.items())
            return found

    return Client(project=PROJECT)


@pytest.fixture(scope="session")
def bucket(gcs):
    """A bucket for tests that need one; each test writes under its own prefix."""
    return gcs.create_bucket("tests")



@pytest.fixture(scope="session")
def gcs_model_dir(gcp_emulators, bucket, tiny_vocab_file) -> str:
    """tiny_model_dir's model (same preset, vocabulary and seed) exported by `python -m model.export` to gs://."""
    from model import export

    uri = "gs://tests/models/tiny"
    code = export.main(["--preset", "distilbert_tiny", "--vocab", tiny_vocab_file, "--seed", "7", "--output_dir", uri])
    assert code == 0
    return uri


def pytest_collection_modifyitems(items):
    """Marks every test under tests/gcp `gcp`, so `-m "not gcp"` runs the suite without the emulators."""
    here = pathlib.Path(__file__).parent
    for item in items:
        if here in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.gcp)


@pytest.fixture
def bigquery_proxy(gcp_emulators, bq, monkeypatch):
    """A FlakyProxy (tests/gcp/flaky_proxy.py) in front of bqemulator, failing nothing until its `decide` is set.

    While the test runs, BigQuery clients made from then on (google-cloud-bigquery through
    BIGQUERY_EMULATOR_HOST, Beam's apitools client through its BASE_URL) talk to the proxy; the session's `bq`
    client, made before, still talks to the emulator directly, so checks see the tables as they are.
    """
    from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client
    from flaky_proxy import FlakyProxy

    with FlakyProxy(gcp_emulators["bigquery"]) as proxy:
        monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", proxy.url)
        monkeypatch.setattr(bigquery_v2_client.BigqueryV2, "BASE_URL", f"{proxy.url}/bigquery/v2/")
        yield proxy
