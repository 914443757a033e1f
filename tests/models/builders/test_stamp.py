"""Build stamps: keys follow config and code, digests follow every byte of a folder."""

from __future__ import annotations

import sys

from circuitray.models.builders.stamp import build_key, is_current, tree_sha256, write_stamp


def test_tree_digest_sees_content_names_and_new_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"123")
    first = tree_sha256(tmp_path)
    assert tree_sha256(tmp_path) == first
    (tmp_path / "a" / "x.bin").write_bytes(b"124")
    assert tree_sha256(tmp_path) != first
    (tmp_path / "a" / "x.bin").write_bytes(b"123")
    assert tree_sha256(tmp_path) == first
    (tmp_path / "a" / "x.bin").rename(tmp_path / "a" / "y.bin")
    assert tree_sha256(tmp_path) != first
    (tmp_path / "a" / "y.bin").rename(tmp_path / "a" / "x.bin")
    (tmp_path / "a" / "extra").write_bytes(b"")
    assert tree_sha256(tmp_path) != first


def test_key_follows_config_and_source(tmp_path, monkeypatch):
    pkg = tmp_path / "stamp_probe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "recipe.py").write_text("STEPS = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    key = build_key({"lr": 1e-3}, modules=["stamp_probe_pkg"])
    assert build_key({"lr": 1e-3}, modules=["stamp_probe_pkg"]) == key
    assert build_key({"lr": 2e-3}, modules=["stamp_probe_pkg"]) != key
    (pkg / "recipe.py").write_text("STEPS = 2\n")  # an edited recipe file in the package
    assert build_key({"lr": 1e-3}, modules=["stamp_probe_pkg"]) != key
    sys.modules.pop("stamp_probe_pkg", None)


def test_stamp_is_current_until_a_folder_changes(tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    (art / "w.safetensors").write_bytes(b"weights")
    stamp = tmp_path / "build.json"
    assert not is_current(stamp, "k1", {"art": art})  # no stamp yet
    write_stamp(stamp, "k1", {"art": art})
    assert is_current(stamp, "k1", {"art": art})
    assert not is_current(stamp, "k2", {"art": art})
    assert not is_current(stamp, "k1", {"art": art, "other": tmp_path / "missing"})
    (art / "w.safetensors").write_bytes(b"")  # e.g. truncated by a full disk
    assert not is_current(stamp, "k1", {"art": art})
    stamp.write_text("{not json")
    assert not is_current(stamp, "k1", {"art": art})
