import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelseal.errors import KeyFormatError, KeyIntegrityError, KeyMismatchError, ModelSealError, OutputExistsError
from modelseal.keys import FORMAT_VERSION, Key

SIG = {"input_shape": [1, 28, 28], "output_size": 10}


def make_key(seed: int = 0, created: str = "2026-01-01T00:00:00+00:00") -> Key:
    g = torch.Generator().manual_seed(seed)
    return Key("trigger-set", {"n": 4, "seed": seed},
               {"images": torch.rand(4, 1, 28, 28, generator=g), "labels": torch.randint(0, 10, (4,), generator=g)},
               SIG, created=created)


def _rewrite_meta(data: bytes, change) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    info = json.loads(header["__metadata__"]["modelseal"])
    change(info)
    header["__metadata__"]["modelseal"] = json.dumps(info)
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def test_round_trip_keeps_everything(tmp_path):
    key = make_key()
    path = key.save(tmp_path / "k.seal")
    back = Key.load(path)
    assert back.method == key.method and back.params == key.params and back.signature == key.signature
    assert back.created == key.created and back.digest() == key.digest()
    for name in key.tensors:
        assert torch.equal(back.tensors[name], key.tensors[name])


def test_same_seed_same_digest_and_bytes():
    assert make_key(1).digest() == make_key(1).digest()
    assert make_key(1).to_bytes() == make_key(1).to_bytes()
    assert make_key(1).digest() != make_key(2).digest()


def test_creation_time_stays_outside_digest_and_follows_source_date_epoch(monkeypatch):
    assert make_key(created="2020-01-01").digest() == make_key(created="2030-01-01").digest()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = Key("x", {}, {"t": torch.ones(2)}, SIG)
    b = Key("x", {}, {"t": torch.ones(2)}, SIG)
    assert a.created == b.created and a.to_bytes() == b.to_bytes()


def test_flipped_byte_in_tensor_data_is_caught():
    data = bytearray(make_key().to_bytes())
    data[-5] ^= 0x01
    with pytest.raises(KeyIntegrityError, match="altered"):
        Key.from_bytes(bytes(data))


def test_changed_params_are_caught():
    data = _rewrite_meta(make_key().to_bytes(), lambda info: info["params"].update(n=5))
    with pytest.raises(KeyIntegrityError):
        Key.from_bytes(data)


def test_future_format_version_is_refused():
    data = _rewrite_meta(make_key().to_bytes(), lambda info: info.update(format=FORMAT_VERSION + 1))
    with pytest.raises(KeyFormatError, match="newer"):
        Key.from_bytes(data)


def test_wrong_method_is_refused():
    with pytest.raises(KeyFormatError, match="expected a 'tafa' key"):
        Key.from_bytes(make_key().to_bytes(), method="tafa")


def test_plain_safetensors_file_is_not_a_key():
    from safetensors.torch import save

    with pytest.raises(KeyFormatError, match="not a modelseal key"):
        Key.from_bytes(save({"w": torch.zeros(3)}))


@pytest.mark.parametrize("data", [b"", b"\x00" * 4, b"\xff" * 64, struct.pack("<Q", 10) + b"{not json}"])
def test_garbage_is_refused(data):
    with pytest.raises(KeyFormatError):
        Key.from_bytes(data)


def test_truncated_file_is_refused(tmp_path):
    data = make_key().to_bytes()
    for cut in (3, 20, len(data) // 2, len(data) - 1):
        with pytest.raises(ModelSealError):
            Key.from_bytes(data[:cut])


def test_missing_file_and_overwrite(tmp_path):
    with pytest.raises(KeyFormatError, match="does not exist"):
        Key.load(tmp_path / "nope.seal")
    path = make_key().save(tmp_path / "k.seal")
    with pytest.raises(OutputExistsError, match="--force"):
        make_key(3).save(path)
    make_key(3).save(path, force=True)
    assert Key.load(path).params["seed"] == 3


def test_signature_check():
    key = make_key()
    key.check_signature((1, 28, 28), 10)
    with pytest.raises(KeyMismatchError, match="input shape"):
        key.check_signature((3, 32, 32), 10)
    with pytest.raises(KeyMismatchError, match="outputs"):
        key.check_signature((1, 28, 28), 100)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_modelseal_errors(data):
    try:
        Key.from_bytes(data)
    except ModelSealError:
        pass


_VALID = make_key().to_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(_VALID)))
def test_mutated_keys_only_raise_modelseal_errors(edits, cut):
    data = bytearray(_VALID)
    for pos, val in edits:
        data[pos] = val
    try:
        Key.from_bytes(bytes(data[:cut]))
    except ModelSealError:
        pass


def test_key_loading_never_unpickles(monkeypatch):
    import pickle

    def boom(*a, **k):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(torch, "load", boom)
    assert Key.from_bytes(make_key().to_bytes()).method == "trigger-set"
