"""Keyless lineage test: was SUSPECT derived from OWNER? No key, no mark: the owner's weights are the evidence.

Paper: Zhu, Kuditipudi, Fang, Hashimoto, Liang, "Independence Tests for Language Models", ICML 2025
(arXiv 2502.12292), on transformer MLP blocks; here also on chains of Conv/Linear layers (the zoo's mlp and cnn,
any `nn.Sequential`-like ReLU chain) and residual networks.

Which units are permuted (the group the exact test's null is invariant under):
- Conv/Linear chains: every hidden layer's units (below).
- Residual networks (the zoo's resnet18 BasicBlocks and wrn WideBlocks): each block's *inner* channels (conv1's
  outputs, read by conv2 only). The residual stream ties channels across blocks (the stem, every block's conv2,
  the shortcuts and the head index it), so its channels are not permuted units; the inner channels' incoming
  weights (conv1's rows, columns = stream channels) and outgoing weights (conv2's columns, rows = stream
  channels) are indexed only by the stream, which no inner permutation touches. The BatchNorm after conv1
  (BasicBlock: bn1; WideBlock: bn2) is folded into conv1's rows and bias (scale gamma/sqrt(var+eps), shift
  beta - mean * scale), the one after conv2 into conv2's rows, so a thief's rescaling of a channel that BN
  undoes changes nothing. Like Zhu et al.'s MLP hidden units in language models.
- Transformers (the zoo's `transformer`, and Hugging Face GPT-2 / Llama checkpoint folders read as tensors by
  `modelseal.checkpoints`): each block's MLP hidden units (fc1 / c_fc / gate_proj and up_proj rows in, fc2 /
  c_proj / down_proj columns out, both indexed by the residual stream), the pre-MLP norm's gain (and bias)
  folded into the incoming weights. Attention heads are not used (deviation: Zhu et al. also align heads).
For blocks, the exact statistic sums the same-index cosines of incoming and outgoing weights over every block
with as many units in both, and each Monte Carlo draw permutes every block's owner units independently: the
null distribution is the owner's invariance under that product of permutation groups, so the p-value is exact
under the same assumption as below (i.i.d. initialisation per unit: torch's conv/linear init, BN's constant
gamma = 1 and beta = 0, transformers' normal init; permutation-equivariant training). The aligned part matches
each block's units from incoming and from outgoing weights; before that, when the networks name a residual
stream with an embedding indexed by something nobody permutes (token embedding columns; for the zoo
transformer its patch-embedding rows and position columns), the suspect's stream coordinates are re-aligned to
the owner's by a Hungarian matching of those rows, so a thief who also permuted the stream is followed
(residual networks' streams are not re-aligned: deviation, a stream permutation of a ResNet defeats both parts).

Null hypothesis (white-box parts): the owner's and the suspect's weights come from *independent*
initialisations (and any training after that). A model trained from the owner's initial weights is *derived*:
shared initialisation is lineage (as in `methods/tafa.py`). The assumption that makes the first test exact is
Zhu et al.'s: the owner's weight distribution is invariant under permutations of the hidden units of every
layer, which holds when the initialisation is i.i.d. per unit (every `reset_parameters` of torch) and training is
permutation-equivariant (plain SGD/Adam on a fixed data order; no per-unit schedule).

Three parts, each a `Verdict`, fused with Holm-Bonferroni (valid under any dependence):

1. `lineage-weights` (exact; Zhu et al.'s PERMTEST, Algorithm 1). Statistic on units *at the same index*, using
   only weights whose other axis no hidden permutation touches: the first hidden layer's incoming rows (indexed
   by input features; a conv channel's flattened kernel, bias appended) and the last hidden layer's outgoing
   columns (indexed by the outputs). With cosine matrices C_in[i, j], C_out[i, j] (owner unit i, suspect unit j),
   phi(s1, sL) = sum_i C_in[s1(i), i] + sum_i C_out[sL(i), i] (s1 = sL when the first hidden layer is the last).
   p = (1 + #{t: phi(pi_t) >= phi(id)}) / (T + 1) over T random permutations of the owner's units is exact for
   this (any) statistic. It is evaluated with Besag and Clifford's sequential Monte Carlo rule (stop at the
   h-th exceedance, p = h / t; Biometrika 1991), which is exact too and stops early on independent models.
   It finds fine-tuned, magnitude-pruned and quantised copies. It cannot find a copy whose hidden units were
   permuted, and it does not apply when the unit counts differ (structured pruning): a statistic invariant to
   the thief's permutation is also invariant to pi_t, so PERMTEST with it always gives p = 1 (why the next
   part exists).
2. `lineage-aligned` (robust; Zhu et al.'s unconstrained idea, *calibrated empirically*, not exact). Two
   alignments of the suspect's units to the owner's from *disjoint* weights: a forward chain (Hungarian
   matching, `scipy.optimize.linear_sum_assignment`, rectangular allowed, on incoming weights, layer by layer
   from the input, each layer's inputs re-indexed by the previous match) and a backward chain (on outgoing
   weights, layer by layer from the output). On a derived copy both recover the thief's permutation and agree
   on (almost) every unit; for an independent pair they are two unrelated matchings. Statistic per hidden layer:
   K = #{suspect units both chains send to the same owner unit}. If one matching were a uniformly random
   injection of m suspect units into n owner units, P[K >= k] <= C(m, k) (n - k)! / n! (union bound, ~1/k!);
   a random-matching null would be wrong here: trained units of independent models are not random matchings
   (units of a kind match units of the same kind in both chains). Measured on digits: independent default MLPs
   (256, 128 units) agree on 9-18 of 256 and 15-32 of 128 units, where random matchings agree on ~1, so the
   union bound gave independents p down to 1e-36. The test therefore uses a conservative null instead: the
   units' agreements K (summed over hidden layers, M suspect units) are taken as Binom(M, rho0) with a
   verifier-set rate rho0 (default 0.5, `aligned_null_rate`), i.e. "an independent model's matchings agree on
   at most half its units"; derived copies agree on (almost) all. This null is *calibrated empirically*, not
   exact: its false-accusation rate and p-value distribution are measured on independent digits models (docs/lineage.md,
   `benchmarks/lineage.py`). It finds permuted and structurally pruned copies as well.
3. `lineage-outputs` (black-box, any suspect). Agreement of the suspect's labels with the owner's on
   verifier-chosen inputs (the verifier's own inputs, else `queries` uniform random inputs in the input box)
   against each reference model's agreement (regression outputs: output distance). Two p-values, and the
   larger is reported (an intersection-union test: valid when either one is): (a) for each reference r an
   exact one-sided sign (McNemar) test on the inputs where [suspect agrees] and [r agrees] differ, H0_r: the
   suspect is no closer to the owner than r, combined as max_r p_r (the lead's construction); (b) the rank
   p-value (1 + #{references at least as close as the suspect}) / (R + 1), exact when an independent suspect
   is exchangeable with the references. (a) alone is NOT a test of independence: measured on digits
   (`benchmarks/lineage.py`, 8 references trained like the independents), it gave 8 of 100 independent
   models p <= 1e-6 (smallest 1e-37): an independent model in the upper tail of closeness beats every
   reference, and with 1000 inputs the sign test is decisive. (b) bounds that, at the price of a floor of
   1/(R + 1): this part alone reaches alpha only with R >= 1/alpha - 1 references. Without references it is
   not judged ("score only"), like c-examples and the peer baselines.

Deviations from Zhu et al.: their statistics are on LLM MLP blocks (gate/up projections; robust test from two
matchings with Spearman's correlation and Fisher's combination); here the exact statistic uses the first and
last hidden layers of a Conv/Linear chain (every block's inner units for residual nets and transformers, gate
and up rows together as the incoming side for Llama), the robust one forward/backward matchings with an agreement count
judged against a conservative Binomial(M, rho0) null (calibrated empirically, above). The Monte Carlo p-value
can reach 1/(T + 1): the exact part alone reaches the default alpha 1e-6 only with T >= 999,999 (the default
T = 10^6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from . import stats, validate
from .errors import ModelSealError
from .verdict import DEFAULT_ALPHA, Verdict, fuse

MAX_PERMUTATIONS = 10_000_000
MAX_QUERIES = 100_000
FUSION_RULE = "Holm-Bonferroni over the judged parts (valid under any dependence)"
RULE_NULL = ("H0: the owner and the suspect come from independent initialisations (weights); the suspect is "
             "no closer to the owner than some reference (outputs)")


class LineageError(ModelSealError):
    """Owner and suspect cannot be compared (e.g. inputs of another size)."""


# ------------------------------------------------------------------------------------------- the layer chain
@dataclass
class Layer:
    """One Conv/Linear layer as (units, in_units, rest): `weight` reshaped so that axis 1 is the previous
    layer's units (or the input channels/features for the first layer)."""

    weight: np.ndarray  # (units, in_units, rest)
    bias: np.ndarray | None  # (units,)

    @property
    def units(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_units(self) -> int:
        return int(self.weight.shape[1])


def chain(module: nn.Module) -> list[Layer] | str:
    """The Conv/Linear layers of `module` as a chain (each layer's inputs are the previous layer's units), or a
    sentence saying why it is not one (then the white-box parts do not apply)."""
    mods = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    if len(mods) < 2:
        return "the model has fewer than two Conv/Linear layers (no hidden layer)"
    if any(isinstance(m, (nn.MultiheadAttention, nn.LayerNorm)) for m in module.modules()):
        return "the model has attention or LayerNorm (not a Conv/Linear chain)"
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return "the model has normalisation layers (only plain Conv/Linear chains are compared)"
    layers: list[Layer] = []
    prev = None
    for m in mods:
        w = m.weight.detach().float().cpu().numpy()
        if isinstance(m, nn.modules.conv._ConvNd) and getattr(m, "groups", 1) != 1:
            return "the model has grouped convolutions"
        units, fan_in = int(w.shape[0]), int(w.shape[1])
        rest = int(np.prod(w.shape[2:])) if w.ndim > 2 else 1
        if prev is None:
            shaped = w.reshape(units, fan_in, rest)
        elif isinstance(m, nn.Linear) and fan_in % prev == 0 and fan_in != prev:
            shaped = w.reshape(units, prev, fan_in // prev)  # a Linear after a flattened conv: channel blocks
        elif fan_in == prev:
            shaped = w.reshape(units, fan_in, rest)
        else:
            return f"its layers do not form a chain ({prev} units feed a layer of {fan_in} inputs)"
        bias = getattr(m, "bias", None)
        b = bias.detach().float().cpu().numpy() if isinstance(bias, torch.Tensor) else None
        layers.append(Layer(shaped, b))
        prev = units
    return layers


def _normalised(rows: np.ndarray) -> np.ndarray:
    rows = rows.reshape(len(rows), -1).astype(np.float64)
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norm > 0, norm, 1.0)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C[i, j] = cosine of row i of `a` and row j of `b` (0 for a zero row)."""
    return _normalised(a) @ _normalised(b).T


def _incoming(layer: Layer, rows: np.ndarray | None = None, cols: np.ndarray | None = None) -> np.ndarray:
    w = layer.weight if rows is None else layer.weight[rows]
    w = w if cols is None else w[:, cols]
    flat = w.reshape(len(w), -1)
    if layer.bias is not None:
        bias = layer.bias if rows is None else layer.bias[rows]
        flat = np.concatenate([flat, bias[:, None]], axis=1)
    return flat


def _outgoing(nxt: Layer, rows: np.ndarray | None = None) -> np.ndarray:
    """Outgoing weights of the units feeding `nxt`, one row per unit (the next layer's rows re-indexed)."""
    w = nxt.weight if rows is None else nxt.weight[rows]
    return np.transpose(w, (1, 0, 2)).reshape(w.shape[1], -1)


def compare(owner: list[Layer], suspect: list[Layer]) -> str | None:
    """None when the suspect's chain corresponds to the owner's layer by layer, else why not."""
    if len(owner) != len(suspect):
        return f"the owner has {len(owner)} Conv/Linear layers, the suspect {len(suspect)}"
    for i, (a, b) in enumerate(zip(owner, suspect, strict=True)):
        if a.weight.shape[2] != b.weight.shape[2]:
            return f"layer {i + 1} has kernels/blocks of {a.weight.shape[2]} vs {b.weight.shape[2]} entries"
    if owner[0].in_units != suspect[0].in_units or owner[-1].units != suspect[-1].units:
        return "the first layer's inputs or the last layer's outputs differ"
    return None


# ------------------------------------------------------------------------- blocks: residual nets, transformers
@dataclass
class UnitGroup:
    """The hidden units of one block, whose weights on both sides are indexed by a stream no unit permutation
    of another block touches: a BasicBlock's conv1 channels (read from and written to the residual stream), a
    transformer MLP's hidden units. `incoming`: (units, stream, r) weights into each unit (normalisation
    folded in), `bias` its bias; `outgoing`: (units, stream, r) weights from each unit to the stream; `stream`:
    the name of the stream both index (a key of `Blocks.streams`, for re-aligning a permuted stream) or None."""

    name: str
    incoming: np.ndarray
    bias: np.ndarray | None
    outgoing: np.ndarray
    stream: str | None = None

    @property
    def units(self) -> int:
        return int(self.incoming.shape[0])

    def rows_in(self, cols: np.ndarray | None = None) -> np.ndarray:
        w = self.incoming if cols is None else self.incoming[:, cols]
        flat = w.reshape(len(w), -1)
        return flat if self.bias is None else np.concatenate([flat, self.bias[:, None]], axis=1)

    def rows_out(self, cols: np.ndarray | None = None) -> np.ndarray:
        w = self.outgoing if cols is None else self.outgoing[:, cols]
        return w.reshape(len(w), -1)


@dataclass
class Blocks:
    """A network as its blocks' unit groups. `kind`: "resnet", "transformer", "gpt2", "llama"; `streams`: for
    each named stream, one row per stream coordinate of weights indexed by an axis nobody permutes (the token
    or patch embedding), from which a permuted stream is re-aligned."""

    kind: str
    groups: list[UnitGroup]
    streams: dict[str, np.ndarray]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def _bn_fold(bn: nn.modules.batchnorm._BatchNorm) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of an eval-mode BatchNorm: y = scale * x + shift."""
    var = _np(bn.running_var) if bn.running_var is not None else np.ones(bn.num_features)
    mean = _np(bn.running_mean) if bn.running_mean is not None else np.zeros(bn.num_features)
    gamma = _np(bn.weight) if bn.weight is not None else np.ones(bn.num_features)
    beta = _np(bn.bias) if bn.bias is not None else np.zeros(bn.num_features)
    scale = gamma / np.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def _conv_units(w: np.ndarray) -> np.ndarray:
    """(out, in, kh, kw) -> (out, in, kh*kw)."""
    return w.reshape(w.shape[0], w.shape[1], -1)


def blocks(module: nn.Module) -> Blocks | str:
    """The zoo's residual networks (ResNet-18's BasicBlocks, WRN's WideBlocks: units = the block's inner
    channels, BatchNorm folded into the convolution that precedes it) and transformer (units = each MLP's hidden
    units, the pre-MLP LayerNorm folded into fc1) as unit groups, or why not."""
    from .models.zoo import BasicBlock, Transformer, TransformerBlock, WideBlock

    groups: list[UnitGroup] = []
    kinds = set()
    for name, m in module.named_modules():
        if isinstance(m, BasicBlock):
            kinds.add("resnet")
            s1, t1 = _bn_fold(m.bn1)
            s2, _ = _bn_fold(m.bn2)
            w1 = _conv_units(_np(m.conv1.weight)) * s1[:, None, None]
            w2 = _conv_units(_np(m.conv2.weight)) * s2[:, None, None]
            groups.append(UnitGroup(name, w1, t1, np.transpose(w2, (1, 0, 2))))
        elif isinstance(m, WideBlock):
            kinds.add("resnet")
            s2, t2 = _bn_fold(m.bn2)
            w1 = _conv_units(_np(m.conv1.weight)) * s2[:, None, None]
            groups.append(UnitGroup(name, w1, t2, np.transpose(_conv_units(_np(m.conv2.weight)), (1, 0, 2))))
        elif isinstance(m, TransformerBlock):
            kinds.add("transformer")
            g, b = _np(m.ln2.weight), _np(m.ln2.bias)
            w1 = _np(m.fc1.weight)
            groups.append(UnitGroup(name, (w1 * g[None, :])[:, :, None], _np(m.fc1.bias) + w1 @ b,
                                    _np(m.fc2.weight).T[:, :, None], stream="residual"))
    if not groups:
        return "the model is neither a Conv/Linear chain nor built of the zoo's residual or transformer blocks"
    if len(kinds) > 1:
        return "the model mixes residual and transformer blocks"
    streams: dict[str, np.ndarray] = {}
    if isinstance(module, Transformer):  # each residual coordinate: its patch-embedding row and position column
        streams["residual"] = np.concatenate([_np(module.embed.weight), _np(module.pos[0]).T], axis=1)
    return Blocks(kinds.pop(), groups, streams)


def checkpoint_blocks(ck: Any) -> Blocks:
    """A Hugging Face decoder checkpoint (`checkpoints.Checkpoint`) as unit groups: each block's MLP hidden units,
    the pre-MLP norm's gain folded into their incoming weights; the stream is aligned by the token embedding."""
    from .checkpoints import CheckpointError

    d = ck.width
    groups: list[UnitGroup] = []
    for i in range(ck.layers):
        if ck.layout == "gpt2":
            pre = f"h.{i}."
            fc = ck.tensor(pre + "mlp.c_fc.weight")  # Conv1D: (d, hidden)
            proj = ck.tensor(pre + "mlp.c_proj.weight")  # (hidden, d)
            if fc.ndim != 2 or fc.shape[0] != d or proj.shape != (fc.shape[1], d):
                raise CheckpointError(f"{ck.folder}: block {i}'s MLP tensors have shapes {list(fc.shape)} and "
                                      f"{list(proj.shape)}, not ({d}, h) and (h, {d})")
            g = ck.tensor(pre + "ln_2.weight", (d,)) if ck.has(pre + "ln_2.weight") else np.ones(d)
            b = ck.tensor(pre + "ln_2.bias", (d,)) if ck.has(pre + "ln_2.bias") else np.zeros(d)
            bias = ck.tensor(pre + "mlp.c_fc.bias", (fc.shape[1],)) if ck.has(pre + "mlp.c_fc.bias") else 0.0
            w_in = fc.T * g[None, :]
            groups.append(UnitGroup(f"h.{i}.mlp", w_in[:, :, None], fc.T @ b + bias, proj[:, :, None],
                                    stream="residual"))
        else:
            pre = f"model.layers.{i}."
            gate, up = ck.tensor(pre + "mlp.gate_proj.weight"), ck.tensor(pre + "mlp.up_proj.weight")
            down = ck.tensor(pre + "mlp.down_proj.weight")
            h = gate.shape[0] if gate.ndim == 2 else -1
            if gate.shape != (h, d) or up.shape != (h, d) or down.shape != (d, h):
                raise CheckpointError(f"{ck.folder}: block {i}'s MLP tensors have shapes {list(gate.shape)}, "
                                      f"{list(up.shape)}, {list(down.shape)}, not (h, {d}) twice and ({d}, h)")
            name = pre + "post_attention_layernorm.weight"
            g = ck.tensor(name, (d,)) if ck.has(name) else np.ones(d)
            w_in = np.stack([gate * g[None, :], up * g[None, :]], axis=2)  # (h, d, 2): gate and up per coordinate
            groups.append(UnitGroup(f"layers.{i}.mlp", w_in, None, down.T[:, :, None], stream="residual"))
    emb_name = "wte.weight" if ck.layout == "gpt2" else "model.embed_tokens.weight"
    emb = ck.tensor(emb_name)
    if emb.ndim != 2 or emb.shape[1] != d:
        raise CheckpointError(f"{ck.folder}: the token embedding '{emb_name}' has shape {list(emb.shape)}, not "
                              f"(vocab, {d})")
    return Blocks(ck.layout, groups, {"residual": emb.T})


def compare_blocks(owner: Blocks, suspect: Blocks) -> str | None:
    """None when the suspect's blocks correspond to the owner's group by group, else why not."""
    if owner.kind != suspect.kind:
        return f"the owner is a {owner.kind} network, the suspect a {suspect.kind} network"
    if len(owner.groups) != len(suspect.groups):
        return f"the owner has {len(owner.groups)} blocks, the suspect {len(suspect.groups)}"
    for a, b in zip(owner.groups, suspect.groups, strict=True):
        if a.incoming.shape[1:] != b.incoming.shape[1:] or a.outgoing.shape[1:] != b.outgoing.shape[1:]:
            return (f"block {a.name}'s stream sides differ ({list(a.incoming.shape[1:])} vs "
                    f"{list(b.incoming.shape[1:])}): another width")
    return None


def stream_alignment(owner: Blocks, suspect: Blocks) -> dict[str, np.ndarray]:
    """For each stream both have (same size): for every owner coordinate, the suspect coordinate matched to it
    (Hungarian on the cosines of their embedding rows) — undoes a thief's permutation of the residual stream."""
    out = {}
    for name, a in owner.streams.items():
        b = suspect.streams.get(name)
        if b is not None and a.shape == b.shape:
            match = _match(cosine(a, b))  # suspect coordinate -> owner coordinate
            inv = np.empty_like(match)
            inv[match] = np.arange(len(match))
            out[name] = inv
    return out


def block_exact_parts(owner: Blocks, suspect: Blocks) -> list[np.ndarray]:
    """One cosine matrix per block with as many units in both (incoming plus outgoing, same-index stream)."""
    return [cosine(a.rows_in(), b.rows_in()) + cosine(a.rows_out(), b.rows_out())
            for a, b in zip(owner.groups, suspect.groups, strict=True) if a.units == b.units]


def block_agreements(owner: Blocks, suspect: Blocks) -> list[dict[str, Any]]:
    """Per block: k (suspect units that the incoming and the outgoing matchings send to the same owner unit),
    m (suspect units), n (owner units), after re-aligning the suspect's streams."""
    align = stream_alignment(owner, suspect)
    out = []
    for a, b in zip(owner.groups, suspect.groups, strict=True):
        cols = align.get(b.stream) if b.stream is not None else None
        f = _match(cosine(a.rows_in(), b.rows_in(cols)))
        g = _match(cosine(a.rows_out(), b.rows_out(cols)))
        out.append({"block": a.name, "k": int(np.sum((f == g) & (f >= 0))), "m": b.units, "n": a.units})
    return out


# ------------------------------------------------------------------------------------------- part 1: exact
def exact_parts(owner: list[Layer], suspect: list[Layer]) -> list[np.ndarray]:
    """The cosine matrices of the exact statistic: first hidden layer's incoming rows, last hidden layer's
    outgoing columns; one matrix when they are the same layer (then both parts share one permutation)."""
    first = cosine(_incoming(owner[0]), _incoming(suspect[0]))
    last = cosine(_outgoing(owner[-1]), _outgoing(suspect[-1]))
    if len(owner) == 2:
        return [first + last]
    return [first, last]


def exact_statistic(parts: list[np.ndarray]) -> float:
    return float(sum(np.trace(c) for c in parts))


def exact_null_draws(parts: list[np.ndarray], rng: np.random.Generator):
    """`draw(k)`: k statistics phi(pi_t) with the owner's units of every part permuted at random."""

    def draw(k: int) -> np.ndarray:
        total = np.zeros(k)
        for c in parts:
            n = len(c)
            perm = np.argsort(rng.random((k, n), dtype=np.float32), axis=1)  # float32: half the time
            total += c[perm, np.arange(n)[None, :]].sum(1)
        return total

    return draw


# ------------------------------------------------------------------------------------------- part 2: aligned
def _match(c: np.ndarray) -> np.ndarray:
    """Hungarian matching maximising total cosine: for every suspect unit (column) its owner unit (row), -1 when
    the suspect has more units than the owner and this one is left out."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(c, maximize=True)
    out = np.full(c.shape[1], -1, dtype=np.intp)
    out[cols] = rows
    return out


def forward_chain(owner: list[Layer], suspect: list[Layer]) -> list[np.ndarray]:
    """Matchings of every hidden layer from incoming weights, from the input on."""
    out: list[np.ndarray] = []
    prev: np.ndarray | None = None
    for a, b in zip(owner[:-1], suspect[:-1], strict=True):
        if prev is None:
            c = cosine(_incoming(a), _incoming(b))
        else:
            keep = prev >= 0  # suspect input units that have an owner unit
            c = cosine(_incoming(a, cols=prev[keep]), _incoming(b, cols=np.flatnonzero(keep)))
        prev = _match(c)
        out.append(prev)
    return out


def backward_chain(owner: list[Layer], suspect: list[Layer]) -> list[np.ndarray]:
    """Matchings of every hidden layer from outgoing weights, from the output back (in layer order)."""
    out: list[np.ndarray] = []
    nxt: np.ndarray | None = None
    for k in range(len(owner) - 1, 0, -1):
        a, b = owner[k], suspect[k]
        if nxt is None:
            c = cosine(_outgoing(a), _outgoing(b))
        else:
            keep = nxt >= 0
            c = cosine(_outgoing(a, rows=nxt[keep]), _outgoing(b, rows=np.flatnonzero(keep)))
        nxt = _match(c)
        out.append(nxt)
    return out[::-1]


def agreements(owner: list[Layer], suspect: list[Layer]) -> list[dict[str, int]]:
    """Per hidden layer: k (units both chains match to the same owner unit), m (suspect units), n (owner units)."""
    fwd, bwd = forward_chain(owner, suspect), backward_chain(owner, suspect)
    out = []
    for i, (f, b) in enumerate(zip(fwd, bwd, strict=True)):
        out.append({"k": int(np.sum((f == b) & (f >= 0))), "m": int(suspect[i].units), "n": int(owner[i].units)})
    return out


# ------------------------------------------------------------------------------------------- the judge
@dataclass
class Lineage:
    """The verifier's rule for a keyless lineage test (the constructor only holds it; `judge` works).

    `alpha`: false-accusation rate; `permutations` T of the exact test (its p-value floor is 1 / (T + 1));
    `stop_after`: Besag-Clifford stopping count of the exact test; `aligned_null_rate` rho0 of the aligned
    test; `queries`: random inputs of the black-box part (when no `inputs` are given); `seed`: the Monte Carlo
    permutations and the random inputs."""

    alpha: float = DEFAULT_ALPHA
    permutations: int = 1_000_000
    stop_after: int = 10
    aligned_null_rate: float = 0.5
    queries: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        self.alpha = validate.alpha(self.alpha, error=LineageError)
        self.permutations = validate.count("permutations", self.permutations, 1, MAX_PERMUTATIONS,
                                           error=LineageError)
        self.stop_after = validate.count("stop_after", self.stop_after, 1, 1000, error=LineageError)
        self.aligned_null_rate = float(validate.number("aligned_null_rate", self.aligned_null_rate, 0.0, 1.0,
                                                       lo_open=True, hi_open=True, error=LineageError))
        self.queries = validate.count("queries", self.queries, 1, MAX_QUERIES, error=LineageError)
        self.seed = int(validate.number("seed", self.seed, 0, 2**63 - 1, integer=True, error=LineageError))

    # ----------------------------------------------------------------------------------------- verbs
    def judge(self, owner: nn.Module, suspect: Any, references: Any = None,
              inputs: torch.Tensor | None = None) -> Verdict:
        """Fused verdict (method "lineage") of the exact, aligned and black-box parts; each part's verdict is in
        `details["verdicts"]`. `suspect`: anything `Suspect.load` takes; `references`: models, Suspects, model
        files or a pool folder (the verifier's); `inputs`: the verifier's own inputs for the black-box part."""
        from .suspect import as_suspect

        if not isinstance(owner, nn.Module):
            raise LineageError(f"the owner must be a model (nn.Module), not {type(owner).__name__}")
        s = as_suspect(suspect)
        shape, bounds = _owner_input(owner, inputs)
        _check_inputs_fit(owner, s, shape)
        parts = [*self.weight_parts(owner, s), self.outputs_part(owner, s, references, shape, bounds, inputs)]
        return fuse(parts, self.alpha, method="lineage", rule=FUSION_RULE, null=RULE_NULL)

    def weight_parts(self, owner: nn.Module, suspect: Any) -> list[Verdict]:
        """The exact (`lineage-weights`) and aligned (`lineage-aligned`) white-box verdicts: on Conv/Linear
        chains (`chain`), else on residual or transformer blocks (`blocks`)."""
        module = getattr(suspect, "module", suspect)
        if not isinstance(module, nn.Module):
            return self._both_not_judged("the suspect is black-box (no weights)")
        a, b = chain(owner), chain(module)
        if not isinstance(a, str) and not isinstance(b, str):
            why = compare(a, b)
            if why is not None:
                return self._both_not_judged(f"white-box parts do not apply: {why}")
            return [self.exact(a, b), self.aligned(a, b)]
        ba, bb = blocks(owner), blocks(module)
        if not isinstance(ba, str) and not isinstance(bb, str):
            return self.block_parts(ba, bb)
        if isinstance(a, str) != isinstance(b, str):
            why = "the owner and the suspect are different kinds of network (a Conv/Linear chain and another)"
        else:
            why = ba if isinstance(ba, str) else bb if isinstance(bb, str) else a if isinstance(a, str) else str(b)
        return self._both_not_judged(f"white-box parts do not apply: {why}")

    def block_parts(self, owner: Blocks, suspect: Blocks) -> list[Verdict]:
        """The exact and aligned verdicts on unit groups (residual blocks, transformer MLPs, checkpoints)."""
        why = compare_blocks(owner, suspect)
        if why is not None:
            return self._both_not_judged(f"white-box parts do not apply: {why}")
        parts = block_exact_parts(owner, suspect)
        if not parts:
            exact = self._not_judged("lineage-weights", "no block has as many hidden units in both (structurally "
                                                        "pruned or another width); the aligned part covers it")
        else:
            exact = self._exact_verdict(parts, 2 * sum(len(c) for c in parts),
                                        f"{owner.kind}: hidden units of {len(parts)} of {len(owner.groups)} "
                                        "blocks (incoming and outgoing weights, same-index stream)")
        return [exact, self._aligned_verdict(block_agreements(owner, suspect))]

    def exact(self, owner: list[Layer], suspect: list[Layer]) -> Verdict:
        if owner[0].units != suspect[0].units or owner[-2].units != suspect[-2].units:
            return self._not_judged("lineage-weights", "the first or last hidden layer has another number of units "
                                                       "(structurally pruned or another width); the aligned part "
                                                       "covers it")
        parts = exact_parts(owner, suspect)
        units = sum(len(c) for c in parts) * (2 if len(parts) == 1 else 1)
        return self._exact_verdict(parts, units, "first hidden (incoming), last hidden (outgoing)")

    def _exact_verdict(self, parts: list[np.ndarray], units: int, layers: str) -> Verdict:
        name = "lineage-weights"
        stat = exact_statistic(parts)
        draw = exact_null_draws(parts, np.random.default_rng([self.seed, 1]))
        res = stats.monte_carlo_pvalue(stat, draw, self.permutations, self.stop_after)
        p = float(res["p_value"])
        details = {"statistic": stat, "units_compared": units, "permutations": self.permutations,
                   "draws": res["draws"], "reached": res["reached"], "stopped_early": res["stopped_early"],
                   "p_floor": res["p_floor"], "layers": layers,
                   "null": "independent initialisations; owner's units exchangeable (exact permutation test)"}
        return Verdict(name, owned=p <= self.alpha, score=stat / units, threshold=0.0, p_value=p,
                       alpha=self.alpha, details=details)

    def aligned(self, owner: list[Layer], suspect: list[Layer]) -> Verdict:
        return self._aligned_verdict(agreements(owner, suspect))

    def _aligned_verdict(self, per: list[dict[str, Any]]) -> Verdict:
        name = "lineage-aligned"
        k, m = sum(d["k"] for d in per), sum(min(d["m"], d["n"]) for d in per)
        rho = self.aligned_null_rate
        p = stats.binomial_tail(k, m, rho)
        need = stats.smallest_significant(m, lambda c: stats.binomial_tail(c, m, rho), self.alpha)
        details = {"layers": per, "agreements": k, "units": m, "null_rate": rho,
                   "null": f"calibrated empirically: agreements ~ Binom(units, {rho:g}) for independent models",
                   "matching": "forward (incoming weights) vs backward (outgoing weights) Hungarian matchings"}
        return Verdict(name, owned=p <= self.alpha, score=k / m if m else 0.0,
                       threshold=need / m if (need is not None and m) else float("inf"), p_value=p,
                       alpha=self.alpha, details=details)

    def _both_not_judged(self, why: str) -> list[Verdict]:
        return [self._not_judged("lineage-weights", why), self._not_judged("lineage-aligned", why)]

    def outputs_part(self, owner: nn.Module, suspect: Any, references: Any, shape: tuple[int, ...],
                     bounds: tuple[float, float], inputs: torch.Tensor | None = None) -> Verdict:
        """The black-box verdict (`lineage-outputs`): the suspect against every reference (intersection-union
        of one-sided sign tests); not judged without references."""
        from .references import as_references, coverage
        from .suspect import as_reference
        from .train import predict

        name = "lineage-outputs"
        raw = as_references(references)
        refs = [as_reference(r) for r in raw]
        if not refs:
            return self._not_judged(name, "no reference models (give the verifier's references, e.g. a pool "
                                          "from `modelseal references make`)")
        pool = coverage(raw, suspect)  # refuses a pool that does not cover the suspect (ReferencePoolError)
        x = _inputs(shape, bounds, self.queries, self.seed) if inputs is None else inputs
        before = suspect.queries
        o = predict(owner, x)
        labels = suspect.label_only or o.reshape(len(o), -1).shape[1] >= 2
        hit_s = _closeness(o, suspect.predict(x), labels, suspect.label_only)
        rows, ps = [], []
        for i, r in enumerate(refs):
            hit_r = _closeness(o, r.predict(x), labels, r.label_only)
            wins, losses = int(np.sum(hit_s > hit_r)), int(np.sum(hit_r > hit_s))
            p_r = stats.sign_test(wins, losses)
            ps.append(p_r)
            rows.append({"reference": i, "closeness": float(hit_r.mean()),
                         "suspect_closer": wins, "reference_closer": losses, "p_value": p_r})
        p_sign = stats.intersection_union(ps)
        score = float(hit_s.mean())  # agreement rate (labels) or minus the mean output distance
        ref_scores = [float(r.pop("closeness")) for r in rows]
        p_rank = stats.permutation_pvalue(score, ref_scores)
        p = stats.intersection_union([p_sign, p_rank])
        best = max(ref_scores)
        details = {"compared": "labels" if labels else "output distance", "inputs": len(x),
                   "inputs_from": "verifier's inputs" if inputs is not None else "uniform in the input box",
                   "references": rows, "reference_closeness": ref_scores, "best_reference": best,
                   "p_sign_tests": p_sign, "p_rank": p_rank, "p_floor": 1.0 / (len(refs) + 1), "reference_pool": pool,
                   "null": "the suspect is exchangeable with the references (rank p-value), and no closer to the "
                           "owner than some reference (sign tests); the larger p-value is reported"}
        return Verdict(name, owned=p <= self.alpha, score=score, threshold=best, p_value=p, alpha=self.alpha,
                       queries=suspect.queries - before, details=details)

    def _not_judged(self, name: str, why: str) -> Verdict:
        return Verdict(name, owned=False, score=0.0, threshold=float("inf"), p_value=1.0, alpha=self.alpha,
                       details={"not_judged": why}, judged=False)


def lineage(owner: nn.Module, suspect: Any, references: Any = None, *, inputs: torch.Tensor | None = None,
            **rule: Any) -> Verdict:
    """`Lineage(**rule).judge(owner, suspect, references, inputs)`: the keyless lineage verdict."""
    try:
        test = Lineage(**rule)
    except TypeError as e:
        raise LineageError(f"bad lineage parameter: {e}") from None
    from .timestamp import not_proven
    from .verdict import RELATED

    v = test.judge(owner, suspect, references, inputs)
    # two model files carry no trusted time: which came first needs timestamped commitments of them (a lineage
    # snapshot key: `fingerprint extract --method lineage`, `commit`, `timestamp`, then `verify --commitment`)
    v.details["time"] = not_proven("the keyless test compares two model files; neither carries a trusted time")
    if v.owned:
        v.details["relatedness"] = RELATED
    return v


def lineage_checkpoints(owner: Any, suspect: Any, **rule: Any) -> Verdict:
    """The keyless lineage verdict of two Hugging Face-format decoder checkpoint folders (config.json +
    safetensors, GPT-2 or Llama layout), read as tensors (`modelseal.checkpoints`): the exact and aligned parts on
    every block's MLP hidden units; the black-box part is not judged (no model code runs)."""
    from .checkpoints import open_checkpoint
    from .timestamp import not_proven
    from .verdict import RELATED

    try:
        test = Lineage(**rule)
    except TypeError as e:
        raise LineageError(f"bad lineage parameter: {e}") from None
    a, b = open_checkpoint(owner), open_checkpoint(suspect)
    if a.layout != b.layout:
        raise LineageError(f"the owner is a {a.layout} checkpoint, the suspect a {b.layout} checkpoint: the layouts "
                           "do not match, so their MLP units do not correspond")
    parts = test.block_parts(checkpoint_blocks(a), checkpoint_blocks(b))
    parts.append(test._not_judged("lineage-outputs", "checkpoint folders: no model code is run, so no outputs"))
    v = fuse(parts, test.alpha, method="lineage", rule=FUSION_RULE, null=RULE_NULL)
    v.details["checkpoints"] = {"layout": a.layout, "owner_layers": a.layers, "suspect_layers": b.layers,
                                "width": a.width}
    v.details["time"] = not_proven("the keyless test compares two checkpoints; neither carries a trusted time")
    if v.owned:
        v.details["relatedness"] = RELATED
    return v


def _owner_input(owner: nn.Module, inputs: torch.Tensor | None) -> tuple[tuple[int, ...], tuple[float, float]]:
    from .models import spec_of

    spec = spec_of(owner) or {}
    bounds = tuple(float(b) for b in spec.get("bounds", (0.0, 1.0)))
    if spec.get("input_shape"):
        shape = tuple(int(v) for v in spec["input_shape"])
    elif inputs is not None:
        shape = tuple(inputs.shape[1:])
    else:
        raise LineageError("the owner model does not record its input shape; give the verifier's inputs")
    if inputs is not None and math.prod(inputs.shape[1:]) != math.prod(shape):
        raise LineageError(f"the inputs have shape {tuple(inputs.shape[1:])}, the owner takes {shape}")
    return shape, (bounds[0], bounds[1])


def _check_inputs_fit(owner: nn.Module, suspect: Any, shape: tuple[int, ...]) -> None:
    """Owner and suspect must take inputs of one size and give outputs of one size."""
    from .models import spec_of

    have = suspect.input_shape if suspect.input_shape is not None else suspect._declared_shape()
    if have is not None and math.prod(have) != math.prod(shape):
        raise LineageError(f"the architectures do not match: the owner takes inputs of shape {shape}, the "
                           f"suspect {tuple(have)}; a model of another input size is not a copy of this owner")
    out_o = (spec_of(owner) or {}).get("output_size")
    out_s = suspect.output_size()
    if out_o is not None and out_s is not None and int(out_o) != int(out_s):
        raise LineageError(f"the architectures do not match: the owner has {out_o} outputs, the suspect {out_s}")


def _inputs(shape: tuple[int, ...], bounds: tuple[float, float], n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) % (2**63))
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, *shape, generator=g)


def _closeness(owner_out: torch.Tensor, out: torch.Tensor, labels: bool, label_only: bool) -> np.ndarray:
    """Per input: 1.0 when the model's label equals the owner's (labels), else minus the output distance."""
    if labels:
        got = out.long().reshape(-1) if label_only or out.dim() == 1 else out.reshape(len(out), -1).argmax(1)
        return (got == owner_out.reshape(len(owner_out), -1).argmax(1)).numpy().astype(float)
    return -torch.linalg.vector_norm((out - owner_out).reshape(len(out), -1), dim=1).numpy()
