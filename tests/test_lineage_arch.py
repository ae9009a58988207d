"""Keyless lineage test on the architectures people use (issue 39 items 1-2): residual networks with BatchNorm,
a ViT-style transformer, and Hugging Face-format GPT-2 / Llama checkpoint folders read as tensors."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pytest
import torch

import modelseal as ms
from modelseal.checkpoints import CheckpointError, open_checkpoint
from modelseal.cli import main
from modelseal.lineage import LineageError, blocks, lineage, lineage_checkpoints

T_FAST = 9999  # the exact part's floor 1e-4; the fused verdict reaches 1e-6 through the aligned part
ARCHS = {"resnet18": {"width": 8}, "transformer": {}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models train several times faster on one thread than on two when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return ms.data.load("digits", seed=0)


def _trained(data, arch: str, seed: int, split, epochs: int = 8):
    m = ms.models.build(arch, data.meta, seed=seed, **ARCHS.get(arch, {}))
    ms.train.fit(m, split, epochs=epochs, seed=seed, lr=3e-3 if arch == "transformer" else 1e-3, progress=False)
    return m.eval()


@pytest.fixture(scope="module", params=list(ARCHS))
def owner(request, digits):
    return request.param, _trained(digits, request.param, 0, digits.owner)


def _parts(v):
    return {d["method"]: d for d in v.details["verdicts"]}


def test_blocks_see_the_inner_units(digits):
    res = blocks(ms.models.build("resnet18", digits.meta, seed=0, width=8))
    assert not isinstance(res, str) and res.kind == "resnet"
    assert [g.units for g in res.groups] == [8, 8, 16, 16, 32, 32, 64, 64]
    vit = blocks(ms.models.build("transformer", digits.meta, seed=0))
    assert not isinstance(vit, str) and vit.kind == "transformer" and [g.units for g in vit.groups] == [64, 64]
    assert vit.streams["residual"].shape[0] == 32


def test_finds_finetuned_pruned_and_permuted_copies(owner, digits):
    arch, model = owner
    att = ms.attacks.get
    copies = {"ftal": att("finetune")(mode="ftal", epochs=3, seed=1).apply(model, digits.attacker),
              "prune": att("prune")(amount=0.5).apply(model, digits.attacker),
              "permute": att("permute")(seed=3).apply(model, digits.attacker)}
    for name, copy in copies.items():
        v = lineage(model, copy, permutations=T_FAST)
        parts = _parts(v)
        assert v.owned and v.p_value <= 1e-6, (arch, name, v.summary())
        assert parts["lineage-aligned"]["p_value"] <= 1e-6 and parts["lineage-aligned"]["score"] > 0.9, (arch, name)
        exact = parts["lineage-weights"]
        if name == "permute":  # the exact test cannot see through a permutation; the aligned part does
            assert exact["judged"] and exact["p_value"] > 0.01, (arch, exact["p_value"])
        else:
            assert exact["p_value"] == pytest.approx(1 / (T_FAST + 1)) and exact["details"]["reached"] == 0


def test_permute_keeps_the_function_of_residual_and_transformer_blocks(owner, digits):
    _, model = owner
    x = torch.rand(32, *digits.meta.input_shape, generator=torch.Generator().manual_seed(0))
    copy = ms.attacks.get("permute")(seed=5).apply(model, digits.attacker)
    with torch.no_grad():
        assert torch.allclose(model(x), copy(x), atol=1e-4)
    changed = [n for n, p in model.state_dict().items() if not torch.equal(p, copy.state_dict()[n])]
    assert changed and all(("conv1" in n or "bn" in n or "conv2" in n or "fc" in n) for n in changed), changed


@pytest.fixture(scope="module")
def independents(digits):
    return _independents(digits, 3)


def _independents(digits, n: int):
    out = []
    for arch in ("resnet18", "transformer", "mlp", "cnn"):
        for i in range(n):
            split = digits.owner if i % 2 else digits.attacker  # the owner's data, or other data
            out.append((arch, _trained(digits, arch, 100 + i, split, epochs=4)))
    return out


def test_no_independent_model_of_either_architecture_is_accused(owner, independents):
    """Independents of four architectures (two of them the owner's kind): none owned at 1e-6 nor at 0.01."""
    arch, model = owner
    judged = 0
    for other_arch, m in independents:
        for alpha in (1e-6, 0.01):
            v = lineage(model, m, permutations=999, alpha=alpha)
            assert not v.owned, (arch, other_arch, alpha, v.summary())
        parts = _parts(v)
        if other_arch == arch:
            judged += 1
            assert parts["lineage-weights"]["judged"] and parts["lineage-aligned"]["judged"]
            assert parts["lineage-aligned"]["score"] < 0.2
        else:
            assert not parts["lineage-aligned"]["judged"]
    assert judged == 3


# ----------------------------------------------------------------------------------- Hugging Face checkpoints
def _text_tokens() -> torch.Tensor:
    """Bytes of a Python standard-library module's source: text shipped with the interpreter, nothing downloads."""
    import textwrap

    return torch.tensor(list(inspect.getsource(textwrap).encode()[:20_000]), dtype=torch.long)


def _hf_model(layout: str, seed: int):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    if layout == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_inner=128, vocab_size=256, n_positions=64,
                                      bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                                   intermediate_size=96, vocab_size=256, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(cfg)


def _finetune(model, tokens: torch.Tensor, steps: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        start = torch.randint(0, len(tokens) - 33, (8,), generator=g)
        batch = torch.stack([tokens[s:s + 32] for s in start.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def _permute_mlp(model, layout: str, seed: int) -> None:
    """A thief's function-preserving obfuscation: permute every block's MLP hidden units."""
    g = torch.Generator().manual_seed(seed)
    if layout == "gpt2":
        for block in model.transformer.h:
            fc, proj = block.mlp.c_fc, block.mlp.c_proj  # Conv1D: weight (in, out)
            perm = torch.randperm(fc.weight.shape[1], generator=g)
            fc.weight.copy_(fc.weight[:, perm])
            fc.bias.copy_(fc.bias[perm])
            proj.weight.copy_(proj.weight[perm])
    else:
        for layer in model.model.layers:
            mlp = layer.mlp
            perm = torch.randperm(mlp.gate_proj.weight.shape[0], generator=g)
            mlp.gate_proj.weight.copy_(mlp.gate_proj.weight[perm])
            mlp.up_proj.weight.copy_(mlp.up_proj.weight[perm])
            mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, perm])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Per layout: owner (random init + a short fine-tune), its fine-tuned derivative, the derivative with permuted
    MLP units, and an independently initialised model trained the same way; saved with save_pretrained."""
    import copy

    root = tmp_path_factory.mktemp("hf")
    tokens = _text_tokens()
    half = len(tokens) // 2
    out: dict[str, dict[str, Path]] = {}
    for layout in ("gpt2", "llama"):
        own = _finetune(_hf_model(layout, 0), tokens[:half], 30, seed=0)
        derived = _finetune(copy.deepcopy(own), tokens[half:], 30, seed=1)
        permuted = copy.deepcopy(derived)
        _permute_mlp(permuted, layout, seed=2)
        x = tokens[:32][None]
        assert torch.allclose(derived(x).logits, permuted(x).logits, atol=1e-4)
        indep = _finetune(_hf_model(layout, 1), tokens[:half], 30, seed=0)
        out[layout] = {}
        for name, m in (("owner", own), ("derived", derived), ("permuted", permuted), ("independent", indep)):
            path = root / f"{layout}-{name}"
            m.save_pretrained(path, safe_serialization=True)
            out[layout][name] = path
    return out


@pytest.mark.parametrize("layout", ["gpt2", "llama"])
def test_checkpoints_finetuned_and_permuted_found_independent_not(checkpoints, layout):
    ck = checkpoints[layout]
    assert open_checkpoint(ck["owner"]).layout == layout
    v = lineage_checkpoints(ck["owner"], ck["derived"], permutations=T_FAST)
    parts = _parts(v)
    assert v.owned and v.p_value <= 1e-6, v.summary()
    assert parts["lineage-weights"]["p_value"] == pytest.approx(1 / (T_FAST + 1))
    assert not parts["lineage-outputs"]["judged"]
    p = lineage_checkpoints(ck["owner"], ck["permuted"], permutations=T_FAST)
    assert p.owned and p.p_value <= 1e-6 and _parts(p)["lineage-aligned"]["score"] > 0.9, p.summary()
    for alpha in (1e-6, 0.01):
        i = lineage_checkpoints(ck["owner"], ck["independent"], permutations=999, alpha=alpha)
        assert not i.owned, (alpha, i.summary())
    assert _parts(i)["lineage-aligned"]["score"] < 0.2


def test_cli_judges_checkpoint_folders(checkpoints, capsys):
    ck = checkpoints["gpt2"]
    capsys.readouterr()
    assert main(["lineage", str(ck["owner"]), str(ck["permuted"]), "--permutations", "999", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["method"] == "lineage" and doc["owned"] and doc["details"]["checkpoints"]["layout"] == "gpt2"
    assert main(["lineage", str(ck["owner"]), str(ck["independent"]), "--permutations", "999"]) == 0
    assert "lineage: not owned" in capsys.readouterr().out


def _one_error_line(capsys, args: list[str], match: str) -> None:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.count("error:") == 1 and match in err, err


def test_cli_bad_checkpoint_folders_are_one_line_errors(checkpoints, tmp_path, capsys):
    gpt2, llama = checkpoints["gpt2"], checkpoints["llama"]
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_error_line(capsys, ["lineage", str(empty), str(gpt2["owner"])], "no config.json")
    _one_error_line(capsys, ["lineage", str(gpt2["owner"]), str(llama["owner"])], "layouts do not match")
    bad = tmp_path / "bad"
    shutil.copytree(gpt2["owner"], bad)
    blob = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(blob[:8] + b"{not json" + blob[17:])
    _one_error_line(capsys, ["lineage", str(gpt2["owner"]), str(bad)], "safetensors")
    (bad / "model.safetensors").write_bytes((10**9).to_bytes(8, "little") + blob[8:])
    _one_error_line(capsys, ["lineage", str(gpt2["owner"]), str(bad)], "truncated")
    other = tmp_path / "other"
    shutil.copytree(gpt2["owner"], other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "t5"}))
    _one_error_line(capsys, ["lineage", str(gpt2["owner"]), str(other)], "unknown layout")
    (other / "config.json").write_text(json.dumps({**cfg, "n_layer": 10**9}))
    _one_error_line(capsys, ["lineage", str(gpt2["owner"]), str(other)], "n_layer")
    model = tmp_path / "m.safetensors"
    ms.models.save_model(ms.models.build("mlp", input_shape=(64,), num_classes=10, seed=0), model)
    _one_error_line(capsys, ["lineage", str(gpt2["owner"]), str(model)], "checkpoint folder")


def test_a_shifted_byte_range_is_refused(checkpoints, tmp_path):
    from modelseal.tensorfile import read_head, read_header

    src = checkpoints["llama"]["owner"] / "model.safetensors"
    head = read_head(src)
    header = read_header(head, "x", CheckpointError)
    name = "model.layers.0.mlp.up_proj.weight"
    a, b = header[name]["data_offsets"]
    header[name]["data_offsets"] = [a, b + 4]
    text = json.dumps(header).encode()
    body = src.read_bytes()[8 + int.from_bytes(head[:8], "little"):]
    folder = tmp_path / "shifted"
    shutil.copytree(checkpoints["llama"]["owner"], folder)
    (folder / "model.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + body)
    with pytest.raises(CheckpointError, match="byte range"):
        open_checkpoint(folder)
    with pytest.raises(LineageError, match="layouts"):
        lineage_checkpoints(checkpoints["llama"]["owner"], checkpoints["gpt2"]["owner"])


def test_a_permuted_residual_stream_is_followed_by_the_aligned_part(digits):
    """A thief permutes the transformer's residual stream too (every d-indexed weight): the aligned part re-aligns
    the stream by the patch-embedding rows and position columns, then finds the permuted MLP units."""
    import copy

    model = _trained(digits, "transformer", 0, digits.owner, epochs=4)
    thief = ms.attacks.get("permute")(seed=3).apply(model, digits.attacker)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(9))
    t = copy.deepcopy(thief)
    with torch.no_grad():
        t.embed.weight.copy_(t.embed.weight[perm])
        t.embed.bias.copy_(t.embed.bias[perm])
        t.pos.copy_(t.pos[:, :, perm])
        for blk in t.blocks:
            for ln in (blk.ln1, blk.ln2):
                ln.weight.copy_(ln.weight[perm])
                ln.bias.copy_(ln.bias[perm])
            blk.attn.in_proj_weight.copy_(blk.attn.in_proj_weight[:, perm])
            blk.attn.out_proj.weight.copy_(blk.attn.out_proj.weight[perm])
            blk.attn.out_proj.bias.copy_(blk.attn.out_proj.bias[perm])
            blk.fc1.weight.copy_(blk.fc1.weight[:, perm])
            blk.fc2.weight.copy_(blk.fc2.weight[perm])
            blk.fc2.bias.copy_(blk.fc2.bias[perm])
        t.norm.weight.copy_(t.norm.weight[perm])
        t.norm.bias.copy_(t.norm.bias[perm])
        t.head.weight.copy_(t.head.weight[:, perm])
        x = torch.rand(16, *digits.meta.input_shape, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(thief(x), t(x), atol=1e-4)
    v = lineage(model, t, permutations=999)
    aligned = _parts(v)["lineage-aligned"]
    assert v.owned and aligned["p_value"] <= 1e-6 and aligned["score"] > 0.9, v.summary()
