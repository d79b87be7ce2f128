"""ddpmkit.io: the atomic writer, the JSON-object reader, file SHA-256 and the cache-folder rule,
on real files in tmp_path."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from ddpmkit.errors import CheckpointError, DatasetError
from ddpmkit.io import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_stream,
    atomic_write_text,
    cache_dir,
    file_sha256,
    fsync_dir,
    read_json_object,
)


class Boom(RuntimeError):
    pass


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_text_bytes_and_stream_writes_replace_the_file_and_leave_no_temporary(
    tmp_path: Path,
) -> None:
    p = atomic_write_text(tmp_path / "sub" / "a.json", "first\n")  # the folder is created
    assert p == tmp_path / "sub" / "a.json" and p.read_text(encoding="utf-8") == "first\n"
    atomic_write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    atomic_write_stream(p, lambda f: f.write(b"streamed"))
    assert p.read_bytes() == b"streamed"
    assert sorted(x.name for x in p.parent.iterdir()) == ["a.json"]
    assert p.stat().st_mode & 0o777 == 0o666 & ~_umask()  # the usual mode, not mkstemp's 0600


@pytest.mark.parametrize("form", ["path", "stream"])
def test_a_failing_write_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path, form: str
) -> None:
    p = tmp_path / "state.json"
    p.write_text("old", encoding="utf-8")
    seen: list[Path] = []

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half", encoding="utf-8")
        seen.append(tmp)
        raise Boom

    def stream_fail(f: object) -> None:
        f.write(b"half")  # type: ignore[attr-defined]
        raise Boom

    with pytest.raises(Boom):
        if form == "path":
            atomic_write(p, half_then_fail)
        else:
            atomic_write_stream(p, stream_fail)
    assert p.read_text(encoding="utf-8") == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["state.json"]
    if seen:  # the temporary was next to the target, under a hidden .tmp- name
        assert seen[0].parent == tmp_path and seen[0].name.startswith(".state.json.tmp-")


def test_the_temporary_keeps_the_suffix_and_the_checkpoint_temporary_prefix(
    tmp_path: Path,
) -> None:
    from ddpmkit.training.checkpoint import is_temporary

    names: list[str] = []

    def savez(tmp: Path) -> None:
        names.append(tmp.name)
        np.savez_compressed(tmp, a=np.arange(5))  # would append .npz to a name without it

    out = atomic_write(tmp_path / "samples.npz", savez)
    assert names[0].startswith(".samples.npz.tmp-") and names[0].endswith(".npz")
    with np.load(out) as z:
        assert z["a"].tolist() == [0, 1, 2, 3, 4]
    assert [x.name for x in tmp_path.iterdir()] == ["samples.npz"]

    pointer: list[str] = []
    atomic_write(tmp_path / "latest", lambda tmp: pointer.append(tmp.name))
    assert pointer[0].startswith(".latest.tmp-") and is_temporary(pointer[0])


def test_explicit_mode(tmp_path: Path) -> None:
    p = atomic_write(tmp_path / "w.bin", lambda tmp: tmp.write_bytes(b"x"), mode=0o640)
    assert p.stat().st_mode & 0o777 == 0o640


def test_file_sha256_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    data = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB: several 1 MiB chunks and a tail
    p = tmp_path / "blob"
    p.write_bytes(data)
    assert file_sha256(p) == hashlib.sha256(data).hexdigest()
    fsync_dir(tmp_path)
    fsync_dir(tmp_path / "no-such-folder")  # a no-op, not an error


def test_json_reader_returns_the_object(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text('{"a": 1, "b": [2, 3]}', encoding="utf-8")
    assert read_json_object(p) == {"a": 1, "b": [2, 3]}


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "c.json: missing; this is not a ddpmkit checkpoint"),
        ("{not json", "c.json: not valid JSON (Expecting property name"),
        (b"\xff\xfe{", "c.json: not valid JSON ("),
        ("[1, 2]", "c.json: expected a JSON object, found an array"),
        ('"text"', "c.json: expected a JSON object, found a string"),
        ("3.5", "c.json: expected a JSON object, found a number"),
        ("null", "c.json: expected a JSON object, found null"),
    ],
)
def test_json_reader_errors_are_one_line_and_of_the_callers_type(
    tmp_path: Path, content: str | bytes | None, needle: str
) -> None:
    p = tmp_path / "c.json"
    if isinstance(content, str):
        p.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        p.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        read_json_object(p, CheckpointError, "this is not a ddpmkit checkpoint")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_json_reader_default_error_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"x\.json: missing; check the path"):
        read_json_object(tmp_path / "x.json")
    (tmp_path / "d.json").mkdir()  # a folder, not a file: unreadable
    with pytest.raises(ValueError, match=r"d\.json: not valid JSON"):
        read_json_object(tmp_path / "d.json")


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, "HOME/.cache/ddpmkit"),  # unset
        ("", "HOME/.cache/ddpmkit"),  # set but empty: same as unset, never the current folder
        ("~/my-cache", "HOME/my-cache"),  # ~ is expanded
        ("ABS/c", "ABS/c"),
    ],
)
def test_cache_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None, expected: str
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    if value is None:
        monkeypatch.delenv("DDPMKIT_CACHE", raising=False)
    else:
        monkeypatch.setenv("DDPMKIT_CACHE", value.replace("ABS", str(tmp_path)))
    want = Path(expected.replace("HOME", str(home)).replace("ABS", str(tmp_path)))
    assert cache_dir() == want


def test_every_cache_user_follows_the_one_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ddpmkit.data import download
    from ddpmkit.evaluation.classifier import user_classifier_path
    from ddpmkit.evaluation.reference import default_cache_dir
    from ddpmkit.nn import groupnorm

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    for value, root in [("~/c", home / "c"), ("", home / ".cache" / "ddpmkit")]:
        monkeypatch.setenv("DDPMKIT_CACHE", value)
        assert download.cache_dir() == root
        assert default_cache_dir() == root / "ref_stats"
        assert (
            user_classifier_path("mnist") == root / "classifiers" / "mnist_classifier.safetensors"
        )
        build = groupnorm._cache_dir()
        assert build.parent == root and build.name.startswith("groupnorm_nhwc-torch")


def test_fetch_into_an_unwritable_place_is_a_dataset_error(tmp_path: Path) -> None:
    from ddpmkit.data.download import fetch

    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    # the folder cannot be created (its parent is a file): no network is touched
    with pytest.raises(
        DatasetError, match=r"cannot write into .*a-file/sub \(Not a directory\); set DDPMKIT_CACHE"
    ):
        fetch("http://127.0.0.1:9/never", blocker / "sub" / "f.gz", "sha256:" + "0" * 64)
    assert [x.name for x in tmp_path.iterdir()] == ["a-file"]
