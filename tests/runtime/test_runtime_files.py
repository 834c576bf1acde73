"""runtime.files: the local Files, Beam's adapter of the same protocol, and staging through any Files."""

import os
import tempfile

import pytest

from runtime import files as files_lib
from runtime import handles
from transforms.files import BeamFiles


@pytest.fixture
def tree(tmp_path):
    """A directory with a nested file, an empty file and a *.gz name that must not be inflated."""
    root = tmp_path / "model"
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"graph")
    (root / "variables" / "variables.index").write_bytes(b"index bytes")
    (root / "assets.gz").write_bytes(b"not gzip at all")
    (root / "empty").write_bytes(b"")
    return root


def test_local_files_exist_read_open_and_list_recursively(tree):
    local = files_lib.LocalFiles()
    prefix = str(tree) + "/"
    assert local.exists(prefix + "saved_model.pb") and local.exists(str(tree))
    assert not local.exists(prefix + "missing")
    assert local.read(prefix + "assets.gz") == b"not gzip at all"
    with local.open(prefix + "variables/variables.index") as f:
        assert f.read() == b"index bytes"
    listed = {info.path: info for info in local.list(prefix)}
    assert sorted(listed) == [prefix + name for name in ("assets.gz", "empty", "saved_model.pb",
                                                          "variables/variables.index")]
    assert listed[prefix + "variables/variables.index"].size == len(b"index bytes")
    assert listed[prefix + "empty"].mtime == os.stat(tree / "empty").st_mtime
    assert local.list(str(tree / "nowhere") + "/") == []
    with pytest.raises(ValueError, match="does not end in '/'"):
        local.list(str(tree))


def test_local_files_take_file_urls_and_list_them_under_the_url(tree):
    local = files_lib.LocalFiles()
    url = "file://" + str(tree) + "/"
    assert local.exists(url + "saved_model.pb") and local.read(url + "saved_model.pb") == b"graph"
    assert url + "saved_model.pb" in {info.path for info in local.list(url)}


def test_beam_files_answer_like_local_files(tree):
    local, beam_files = files_lib.LocalFiles(), BeamFiles()
    prefix = str(tree) + "/"
    for path in (prefix + "saved_model.pb", str(tree), prefix + "missing"):
        assert beam_files.exists(path) == local.exists(path)
    for name in ("assets.gz", "empty", "variables/variables.index"):
        assert beam_files.read(prefix + name) == local.read(prefix + name)
    assert ({(i.path, i.size) for i in beam_files.list(prefix)} == {(i.path, i.size) for i in local.list(prefix)})


class _MemoryFiles:
    """A filesystem of its own (mem://), as a test double for an object store: Files is all staging needs."""

    def __init__(self, contents: dict):
        self.contents, self.opened = dict(contents), []

    def exists(self, path):
        return path in self.contents or any(name.startswith(path.rstrip("/") + "/") for name in self.contents)

    def read(self, path):
        return self.contents[path]

    def list(self, prefix):
        return [files_lib.FileInfo(path, len(data), 1.0) for path, data in self.contents.items()
                if path.startswith(prefix)] + [files_lib.FileInfo(prefix + "placeholder/", 0, 1.0)]

    def open(self, path):
        import io

        self.opened.append(path)
        return io.BytesIO(self.contents[path])


@pytest.fixture
def scratch_tmp(tmp_path, monkeypatch):
    """Staged copies go under this test's own temporary directory."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.makedirs(tempfile.tempdir)
    return tempfile.tempdir


def test_staging_copies_once_reuses_until_the_model_changes_and_keeps_one_version(scratch_tmp):
    uri = "mem://bucket/models/encoder"
    store = _MemoryFiles({uri + "/saved_model.pb": b"graph", uri + "/variables/variables.index": b"index",
                          uri + "/assets/vocab.txt.gz": b"as stored", "mem://bucket/models/encoder2/x": b"other"})
    first = handles.stage_locally(uri, files=store)
    assert first.startswith(scratch_tmp)
    assert sorted(store.opened) == [uri + "/assets/vocab.txt.gz", uri + "/saved_model.pb",
                                    uri + "/variables/variables.index"]
    with open(os.path.join(first, "assets", "vocab.txt.gz"), "rb") as f:
        assert f.read() == b"as stored"
    store.opened.clear()
    assert handles.stage_locally(uri + "/", files=store) == first and store.opened == []
    assert handles.resolve_handle(uri, files=store) == first

    store.contents[uri + "/saved_model.pb"] = b"new graph"
    changed = handles.stage_locally(uri, files=store)
    assert changed != first and not os.path.exists(first)
    assert sorted(os.listdir(os.path.dirname(changed))) == [".lock", os.path.basename(changed)]


def test_staging_refuses_a_directory_without_saved_model_and_paths_outside_it(scratch_tmp):
    with pytest.raises(ValueError, match="saved_model.pb"):
        handles.stage_locally("mem://b/empty", files=_MemoryFiles({"mem://b/empty/notes.txt": b"x"}))
    escaping = _MemoryFiles({"mem://b/m/saved_model.pb": b"graph", "mem://b/m/../../evil": b"x"})
    with pytest.raises(ValueError, match="outside"):
        handles.stage_locally("mem://b/m", files=escaping)
    home = os.path.join(scratch_tmp, "staged_models")
    assert [name for sub in os.listdir(home) for name in os.listdir(os.path.join(home, sub))] == [".lock"]


def test_local_and_url_handles_are_not_staged():
    assert handles.resolve_handle("/models/encoder") == "/models/encoder"
    assert handles.resolve_handle("file:///models/encoder") == "file:///models/encoder"
