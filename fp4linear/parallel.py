"""Tensor-parallel NVFP4 layers: shard ModelOpt tensors on 16-element block boundaries.

At TP=4 or 8 the per-rank K (or N) often is not a multiple of 16 (GLM-4.5-Air down K 10944 / 8 =
1368), so a scale block would straddle two ranks. `partition` splits on block boundaries instead
(uneven shards: 1376 / 1360), and the column-parallel layer that produces an activation and the
row-parallel layer that consumes it use the same partition. Each rank then pads its shard for its
own backend (`fp4linear.Linear`). A gated MLP shards the same way (`shard_gated_mlp`,
`ParallelGatedMLP`): gate and up by columns and down by rows on one partition of the intermediate
size, so each rank's [gate; up] GEMM yields exactly the [gate, up] halves its activation and down
shard need.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .format import BLOCK_SIZE, round_up
from .linear import Linear
from .mlp import GatedMLP


def partition(size: int, tp_size: int) -> list[tuple[int, int]]:
    """[start, end) of each rank's share of `size`, cut on 16-element block boundaries.

    Blocks are spread as evenly as possible; the spare blocks go to the last ranks, which also
    hold the partial tail block, so shard widths differ by at most 16.
    """
    if isinstance(tp_size, bool) or not isinstance(tp_size, int) or tp_size < 1:
        raise ValueError(f"tp_size must be a positive int, got {tp_size!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    blocks = round_up(size, BLOCK_SIZE) // BLOCK_SIZE
    if blocks < tp_size:
        raise ValueError(f"cannot split {size} ({blocks} blocks of {BLOCK_SIZE}) over tp_size={tp_size}")
    base, extra = divmod(blocks, tp_size)
    bounds, start = [], 0
    for rank in range(tp_size):
        end = min(size, start + (base + (rank >= tp_size - extra)) * BLOCK_SIZE)
        bounds.append((start, end))
        start = end
    return bounds


def shard_modelopt(weight, weight_scale, weight_scale_2, input_scale, bias=None, *, tp_size: int, rank: int,
                   mode: str, in_features: int | None = None) -> dict:
    """This rank's share of a ModelOpt NVFP4 layer, as `Linear.from_modelopt` keyword arguments.

    mode="column": rows of N (bias sliced with them); mode="row": columns of K (the bias is kept
    whole and added once, after the all-reduce, by `RowParallelLinear`).
    """
    n, k = weight.shape[0], weight.shape[1] * 2
    in_features = k if in_features is None else in_features
    if mode == "column":
        start, end = partition(n, tp_size)[rank]
        return dict(weight=weight[start:end], weight_scale=weight_scale[start:end], weight_scale_2=weight_scale_2,
                    input_scale=input_scale, bias=None if bias is None else bias[start:end], in_features=in_features)
    if mode == "row":
        start, end = partition(in_features, tp_size)[rank]
        k_end = round_up(end, BLOCK_SIZE)  # the checkpoint's own 16-padding stays with the last rank
        return dict(weight=weight[:, start // 2 : k_end // 2], weight_scale=weight_scale[:, start // 16 : k_end // 16],
                    weight_scale_2=weight_scale_2, input_scale=input_scale, bias=None, in_features=end - start)
    raise ValueError(f"mode must be 'column' or 'row', got {mode!r}")


def _group_info(group) -> tuple[int, int]:
    return dist.get_world_size(group), dist.get_rank(group)


class ColumnParallelLinear(nn.Module):
    """Output features split over the group; forward returns this rank's slice of the output
    ([..., N_rank]), or the whole output when gather_output=True (all-gather)."""

    def __init__(self, local: Linear, out_features: int, *, group=None, gather_output: bool = False):
        super().__init__()
        self.local, self.out_features, self.group, self.gather_output = local, out_features, group, gather_output
        tp, rank = _group_info(group)
        self.bounds = partition(out_features, tp)
        if self.bounds[rank][1] - self.bounds[rank][0] != local.out_features:
            raise ValueError(f"rank {rank}: local layer has {local.out_features} outputs, partition says {self.bounds[rank]}")

    @classmethod
    def from_modelopt(cls, weight, weight_scale, weight_scale_2, input_scale, bias=None, *, group=None,
                      backend="auto", gather_output=False):
        tp, rank = _group_info(group)
        shard = shard_modelopt(weight, weight_scale, weight_scale_2, input_scale, bias, tp_size=tp, rank=rank,
                               mode="column")
        return cls(Linear.from_modelopt(**shard, backend=backend), weight.shape[0], group=group,
                   gather_output=gather_output)

    def forward(self, x):
        y = self.local(x)
        if not self.gather_output:
            return y
        # Uneven shards: all-gather equal-sized padded pieces, then keep each rank's real columns.
        width = max(e - s for s, e in self.bounds)
        padded = torch.nn.functional.pad(y, (0, width - y.shape[-1])).contiguous()
        pieces = [torch.empty_like(padded) for _ in self.bounds]
        dist.all_gather(pieces, padded, group=self.group)
        return torch.cat([p[..., : e - s] for p, (s, e) in zip(pieces, self.bounds)], dim=-1)


class RowParallelLinear(nn.Module):
    """Input features split over the group: takes this rank's slice of the input ([..., K_rank],
    e.g. a ColumnParallelLinear's output) and returns the all-reduced full output."""

    def __init__(self, local: Linear, in_features: int, bias: torch.Tensor | None = None, *, group=None):
        super().__init__()
        self.local, self.in_features, self.group = local, in_features, group
        tp, rank = _group_info(group)
        self.bounds = partition(in_features, tp)
        if self.bounds[rank][1] - self.bounds[rank][0] != local.in_features:
            raise ValueError(f"rank {rank}: local layer takes {local.in_features} inputs, partition says {self.bounds[rank]}")
        self.register_buffer("bias", bias)

    @classmethod
    def from_modelopt(cls, weight, weight_scale, weight_scale_2, input_scale, bias=None, *, group=None,
                      backend="auto", in_features: int | None = None):
        tp, rank = _group_info(group)
        in_features = weight.shape[1] * 2 if in_features is None else in_features
        shard = shard_modelopt(weight, weight_scale, weight_scale_2, input_scale, None, tp_size=tp, rank=rank,
                               mode="row", in_features=in_features)
        return cls(Linear.from_modelopt(**shard, backend=backend), in_features, bias, group=group)

    def forward(self, x):
        y = self.local(x)
        dist.all_reduce(y, group=self.group)
        return y + self.bias if self.bias is not None else y


def shard_gated_mlp(gate: dict, up: dict, down: dict, *, tp_size: int, rank: int, in_features: int | None = None,
                    intermediate_size: int | None = None) -> dict:
    """This rank's share of a gated MLP from its three full ModelOpt layers (each a dict of
    `Linear.from_modelopt` arguments), as `GatedMLP.from_modelopt` keyword arguments (act and backend
    are the caller's): gate and up by rows of N, down by columns of K, all on
    `partition(intermediate_size, tp_size)`. down's bias is left out: `ParallelGatedMLP` adds it
    once, after the all-reduce."""
    inter = gate["weight"].shape[0] if intermediate_size is None else intermediate_size
    if inter != gate["weight"].shape[0] or up["weight"].shape[0] != inter:
        raise ValueError(f"gate and up must have intermediate_size = {inter} rows, got {gate['weight'].shape[0]} "
                         f"and {up['weight'].shape[0]}")
    parts = {}
    for name, tensors, mode, k in (("gate", gate, "column", in_features), ("up", up, "column", in_features),
                                   ("down", down, "row", inter)):
        shard = shard_modelopt(**{**tensors, "bias": None if name == "down" else tensors.get("bias")},
                               tp_size=tp_size, rank=rank, mode=mode, in_features=k)
        shard.pop("in_features")
        parts[name] = shard
    start, end = partition(inter, tp_size)[rank]
    return dict(**parts, in_features=in_features, intermediate_size=end - start)


class ParallelGatedMLP(nn.Module):
    """A gated MLP over the group: each rank runs its `GatedMLP` shard (gate/up columns and down rows
    of one partition of the intermediate size) on the whole input, then the partial outputs are
    all-reduced and down's bias added once."""

    def __init__(self, local: GatedMLP, intermediate_size: int, bias: torch.Tensor | None = None, *, group=None):
        super().__init__()
        self.local, self.intermediate_size, self.group = local, intermediate_size, group
        tp, rank = _group_info(group)
        self.bounds = partition(intermediate_size, tp)
        if self.bounds[rank][1] - self.bounds[rank][0] != local.intermediate_size:
            raise ValueError(f"rank {rank}: local GatedMLP has intermediate size {local.intermediate_size}, "
                             f"partition says {self.bounds[rank]}")
        self.register_buffer("bias", bias)

    @classmethod
    def from_modelopt(cls, gate: dict, up: dict, down: dict, *, act: str = "silu_mul", group=None, backend="auto",
                      in_features: int | None = None, intermediate_size: int | None = None):
        tp, rank = _group_info(group)
        shard = shard_gated_mlp(gate, up, down, tp_size=tp, rank=rank, in_features=in_features,
                                intermediate_size=intermediate_size)
        local = GatedMLP.from_modelopt(**shard, act=act, backend=backend)
        return cls(local, intermediate_size or gate["weight"].shape[0], down.get("bias"), group=group)

    def forward(self, x):
        y = self.local(x)
        dist.all_reduce(y, group=self.group)
        return y + self.bias if self.bias is not None else y


def split_last_dim(x: torch.Tensor, tp_size: int, rank: int) -> torch.Tensor:
    """This rank's slice of x's last dimension under `partition` (the input of a row-parallel layer)."""
    start, end = partition(x.shape[-1], tp_size)[rank]
    return x[..., start:end]


__all__ = ["ColumnParallelLinear", "ParallelGatedMLP", "RowParallelLinear", "partition", "shard_gated_mlp",
           "shard_modelopt", "split_last_dim"]
