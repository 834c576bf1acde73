"""The arrows between packages: runtime imports no Beam (nor TensorFlow until it runs), transforms no model code."""

import ast
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def _imported_modules(path: pathlib.Path) -> set[str]:
    """Every module a source file imports, at the top or inside functions (lazy imports count too)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module)
    return imported


def _sources(package: str) -> list[pathlib.Path]:
    sources = sorted((REPO / package).rglob("*.py"))
    assert sources, package
    return sources


@pytest.mark.parametrize("package,forbidden", [("runtime", "apache_beam"), ("transforms", "model")])
def test_a_package_never_imports_what_lies_upstream_of_it(package, forbidden):
    for source in _sources(package):
        offending = {name for name in _imported_modules(source) if name.split(".")[0] == forbidden}
        assert not offending, f"{source.relative_to(REPO)} imports {sorted(offending)}"


def test_importing_runtime_loads_neither_beam_nor_tensorflow():
    """A worker that only reads and writes (a shared model elsewhere) pays for neither."""
    modules = sorted(path.stem for path in (REPO / "runtime").glob("*.py") if path.stem != "__init__")
    code = ("import sys\nimport runtime\n" + "".join(f"import runtime.{name}\n" for name in modules)
            + "print(sorted({m.split('.')[0] for m in sys.modules} & {'apache_beam', 'tensorflow', 'model'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_every_public_name_of_runtime_is_exported():
    import runtime

    for name in runtime.__all__:
        assert hasattr(runtime, name), name


def test_loading_and_chunking_import_neither_keras_nor_tensorflow_texts_package(tiny_model_dir):
    """tensorflow_text's package imports its Keras layers, and TensorFlow its Keras optimizers: seconds of every
    run's start-up (BENCHMARKS.md, Levers). The runtime loads the text op libraries alone."""
    code = f"""
import sys
import runtime
embedder = runtime.load("{tiny_model_dir}/encoder", "{tiny_model_dir}/preprocessor", seq_length=32, pooling="mean")
embedder.embed([("a short text",)])
embedder.embed_documents(["a long text " * 40], runtime.ChunkSettings("late", 16, 4))
print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'keras', 'tf_keras', 'tensorflow_text', 'sklearn'}}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_only_the_command_line_imports_tensorflow_in_pipeline():
    """pipeline/ wires transforms together and knows no TensorFlow; the command line alone imports it (quietly,
    once its flags are checked), through runtime."""
    for source in _sources("pipeline"):
        tensorflow = {name for name in _imported_modules(source) if name.split(".")[0] == "tensorflow"}
        assert not tensorflow, f"{source.relative_to(REPO)} imports {sorted(tensorflow)}"
        if source.name != "cli.py":
            assert "import_tensorflow" not in source.read_text(encoding="utf-8"), source.relative_to(REPO)
