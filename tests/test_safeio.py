"""The one safe-IO module: bounded file reads, bounded JSON, atomic writes."""

import os

import pytest

from modelseal import safeio
from modelseal.errors import KeyFormatError, ModelSealError, WriteError
from modelseal.safeio import MAX_JSON_DEPTH, loads_json, read_file, read_json, write_atomic, write_files


def test_read_file_returns_a_file_within_the_bound(tmp_path):
    p = tmp_path / "c.json"
    p.write_bytes(b"x" * 10)
    assert read_file(p, KeyFormatError, "commitment", max_bytes=10) == b"x" * 10


def test_read_file_refuses_a_file_larger_than_the_bound(tmp_path):
    p = tmp_path / "c.json"
    p.write_bytes(b"x" * 11)
    with pytest.raises(KeyFormatError, match=r"^commitment .*c\.json is larger than 10 bytes[^\n]*$"):
        read_file(p, KeyFormatError, "commitment", max_bytes=10)


def test_read_file_refuses_a_missing_file(tmp_path):
    with pytest.raises(KeyFormatError, match=r"^commitment .*none\.json does not exist$"):
        read_file(tmp_path / "none.json", KeyFormatError, "commitment")


def test_read_file_refuses_a_directory(tmp_path):
    with pytest.raises(KeyFormatError, match=r"is a directory, not a file$"):
        read_file(tmp_path, KeyFormatError, "commitment")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_read_file_refuses_a_fifo_instead_of_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ModelSealError, match="FIFO"):
        read_file(fifo)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_read_file_refuses_an_unreadable_file_in_one_line(tmp_path):
    p = tmp_path / "secret.json"
    p.write_text("{}")
    p.chmod(0)
    try:
        with pytest.raises(ModelSealError, match=r"^cannot read file .*secret\.json: Permission denied$"):
            read_file(p)
    finally:
        p.chmod(0o600)


def test_json_depth_is_bounded_and_the_bound_itself_is_accepted():
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert loads_json(ok, "src") == eval(ok)
    with pytest.raises(ModelSealError, match=f"^src: JSON nested too deeply \\(more than {MAX_JSON_DEPTH} levels"):
        loads_json("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "src")


def test_json_deep_enough_to_exhaust_the_parser_is_one_error():
    with pytest.raises(KeyFormatError, match="nested too deeply"):
        loads_json("{\"a\":" * 200_000, "src", KeyFormatError)


def test_json_brackets_inside_strings_do_not_count_as_depth():
    assert loads_json('{"a": "' + "[" * 1000 + '"}', "src") == {"a": "[" * 1000}


@pytest.mark.parametrize("text", ['{"p": NaN}', '{"p": Infinity}', '{"p": -Infinity}', '{"p": 1e999}'])
def test_json_refuses_non_finite_numbers(text):
    with pytest.raises(KeyFormatError, match="^src: not valid JSON \\((non-finite number|number 1e999)"):
        loads_json(text, "src", KeyFormatError)


def test_json_refuses_duplicate_keys():
    with pytest.raises(ModelSealError, match="^src: not valid JSON \\(duplicate key 'seed' in one object\\)$"):
        loads_json('{"x": {"seed": 1, "seed": 2}}', "src")


def test_json_refuses_invalid_utf8_and_text_over_the_bound():
    with pytest.raises(ModelSealError, match="not valid JSON \\(not UTF-8 text\\)"):
        loads_json(b"\xff\xfe{}", "src")
    with pytest.raises(ModelSealError, match="larger than 4 bytes"):
        loads_json("[1, 2]", "src", max_bytes=4)


def test_a_commitment_with_nan_is_refused(tmp_path):
    from modelseal import commitment

    p = tmp_path / "c.json"
    p.write_text('{"type": "modelseal-commitment", "format": 3, "params": {"seed": NaN}}')
    with pytest.raises(KeyFormatError, match=r"c\.json: not valid JSON \(non-finite number NaN"):
        commitment.load(p)


def test_read_json_names_the_file(tmp_path):
    p = tmp_path / "m.json"
    p.write_text('{"a": [1, 2.5, "x"]}')
    assert read_json(p) == {"a": [1, 2.5, "x"]}
    p.write_text("{")
    with pytest.raises(ModelSealError, match=r"m\.json: not valid JSON"):
        read_json(p)


def test_write_atomic_refuses_an_existing_file_without_force(tmp_path):
    p = tmp_path / "out.json"
    p.write_text("old")
    with pytest.raises(ModelSealError, match="already exists"):
        write_atomic(p, "new")
    assert write_atomic(p, "new", force=True) == p and p.read_text() == "new"


def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    p = tmp_path / "out.json"
    p.write_text("old")
    real = safeio._write_tmp

    def half(tmp, data, private):
        real(tmp, data[:3], private)  # part of the file is on disk when the write stops
        raise KeyboardInterrupt

    monkeypatch.setattr(safeio, "_write_tmp", half)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(p, "new content", force=True)
    assert p.read_text() == "old" and [q.name for q in tmp_path.iterdir()] == ["out.json"]


def test_a_failed_write_of_a_new_file_leaves_nothing(tmp_path, monkeypatch):
    def full(tmp, data, private):
        tmp.write_bytes(b"par")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safeio, "_write_tmp", full)
    with pytest.raises(WriteError, match="No space left on device"):
        write_files([(tmp_path / "a", b"a"), (tmp_path / "b", b"b")])
    assert list(tmp_path.iterdir()) == []


def test_write_files_private_targets_are_0600(tmp_path):
    a, k = write_files([(tmp_path / "m", b"model"), (tmp_path / "k", b"key")], private=[tmp_path / "k"])
    assert k.stat().st_mode & 0o777 == 0o600 and a.read_bytes() == b"model"


def test_read_file_under_the_default_bound_allocates_only_the_file(tmp_path):
    p = tmp_path / "k.seal"
    p.write_bytes(b"key")  # the default bound (tens of GiB) must not be allocated up front
    assert read_file(p) == b"key"


def test_an_inference_body_nested_too_deeply_is_one_tensor_error():
    from modelseal.suspect import oip

    with pytest.raises(oip.TensorError, match="body is not JSON"):
        oip.split_body(b"[" * 100_000, None)
