import pytest
import torch
from torch import nn

import modelseal as ms
from modelseal.errors import ModelError, OutputExistsError
from modelseal.models import export_onnx, load_model, save_model


@pytest.mark.parametrize("name,kw", [("mlp", {}), ("cnn", {}), ("resnet18", {"width": 8}), ("wrn", {"k": 1})])
def test_zoo_builds_and_uses_relu_modules(name, kw, mnist):
    m = ms.models.build(name, mnist.meta, seed=0, **kw)
    assert m(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert ms.models.relu_modules(m)
    assert not any(isinstance(x, nn.Module) and "functional" in type(x).__name__ for x in m.modules())


def test_colour_inputs_and_vae_decoder():
    meta = ms.data.Meta("c", (3, 32, 32), (0.0, 1.0), 100)
    assert ms.models.build("resnet18", meta, width=8)(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    dec = ms.models.build("vae-decoder", input_shape=(8,), num_classes=784, image_shape=(1, 28, 28))
    out = dec(torch.randn(5, 8))
    assert out.shape == (5, 1, 28, 28) and float(out.detach().min()) >= 0 and float(out.detach().max()) <= 1


def test_seed_fixes_weights_without_touching_global_rng(mnist):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = ms.models.build("cnn", mnist.meta, seed=5)
    after = torch.rand(1)
    b = ms.models.build("cnn", mnist.meta, seed=5)
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_unknown_architecture_lists_known(mnist):
    with pytest.raises(ModelError, match="known: .*cnn"):
        ms.models.build("vgg", mnist.meta)


@pytest.mark.parametrize("name,kw", [("cnn", {}), ("resnet18", {"width": 4}), ("mlp", {"hidden": (32,)})])
def test_save_load_round_trip(tmp_path, mnist, name, kw):
    m = ms.models.build(name, mnist.meta, seed=0, **kw).eval()
    save_model(m, tmp_path / "m.safetensors")
    back = load_model(tmp_path / "m.safetensors")
    x = mnist.test.x[:32]
    assert (m(x) - back(x)).abs().max() < 1e-4
    assert back.modelseal_spec["kwargs"] == {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()} \
        or back.modelseal_spec["name"] == name


def test_onnx_round_trip(tmp_path, owner_cnn, mnist):
    export_onnx(owner_cnn, tmp_path / "m.onnx")
    s = ms.Suspect.load(tmp_path / "m.onnx")
    x = mnist.test.x[:64]
    assert (s.predict(x) - ms.train.predict(owner_cnn, x)).abs().max() < 1e-4
    assert s.module is None and s.queries == 64


def test_model_files_refuse_overwrite_and_garbage(tmp_path, mnist):
    m = ms.models.build("mlp", mnist.meta)
    p = save_model(m, tmp_path / "m.safetensors")
    with pytest.raises(OutputExistsError):
        save_model(m, p)
    with pytest.raises(OutputExistsError):
        export_onnx(m, p)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="bad.safetensors"):
        load_model(tmp_path / "bad.safetensors")
    data = p.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelError, match="cut.safetensors"):
        load_model(tmp_path / "cut.safetensors")
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")


def test_plain_safetensors_without_spec_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ModelError, match="without modelseal architecture metadata"):
        load_model(tmp_path / "plain.safetensors")


def test_foreign_module_cannot_be_saved_but_exports(tmp_path):
    m = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ModelError, match="export_onnx"):
        save_model(m, tmp_path / "x.safetensors")
    export_onnx(m, tmp_path / "x.onnx", input_shape=(4,))
    assert ms.Suspect.load(tmp_path / "x.onnx").predict(torch.zeros(3, 4)).shape == (3, 2)


def test_signature_of_foreign_module():
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    assert ms.models.signature_of(m, (3, 4)) == {"input_shape": [3, 4], "output_size": 3}
    with pytest.raises(ModelError):
        ms.models.signature_of(m)
