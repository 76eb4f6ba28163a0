"""Tensor-parallel sharding on 16-element block boundaries: simulated ranks and real gloo groups."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given
from hypothesis import strategies as st

import fp4linear
from fp4linear import parallel

from .conftest import free_port, modelopt_checkpoint


@given(size=st.integers(16, 40000), tp=st.sampled_from([1, 2, 4, 8]))
def test_partition_properties(size, tp):
    if -(-size // 16) < tp:
        with pytest.raises(ValueError, match="cannot split"):
            parallel.partition(size, tp)
        return
    bounds = parallel.partition(size, tp)
    assert bounds[0][0] == 0 and bounds[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert all(s % 16 == 0 for s, _ in bounds)
    widths = [e - s for s, e in bounds]
    assert min(widths) > 0 and max(widths) - min(widths) <= 16


def test_partition_real_shapes():
    assert parallel.partition(10944, 8) == [(i * 1360, (i + 1) * 1360) for i in range(4)] + [
        (5440 + i * 1376, 5440 + (i + 1) * 1376) for i in range(4)]  # GLM-4.5-Air down K: 1368 per rank is not /16
    assert [e - s for s, e in parallel.partition(10304, 8)] == [1280] * 4 + [1296] * 4  # Nemotron in_proj, 1288/rank
    assert parallel.partition(33, 2) == [(0, 16), (16, 33)]


def full_layer(ckpt):
    return fp4linear.Linear.from_modelopt(**ckpt, backend="triton")


@pytest.mark.parametrize("n, k, tp", [(136, 10944, 8), (40, 464, 2), (72, 464, 4), (136, 464, 8), (40, 48, 2), (73, 1376, 4)])
def test_simulated_ranks_match_unsharded(n, k, tp):
    ckpt, _ = modelopt_checkpoint(n, k, bias=True, seed=k + tp)
    ckpt["bias"] = ckpt["bias"].float()
    x = torch.randn(5, k) * 3
    want = full_layer(ckpt)(x)  # fp32 activations and output: only summation order may differ

    rows = []
    for rank in range(tp):  # column parallel: each rank computes its rows of N, exactly
        shard = parallel.shard_modelopt(**ckpt, tp_size=tp, rank=rank, mode="column")
        rows.append(fp4linear.Linear.from_modelopt(**shard, backend="triton")(x))
    assert torch.allclose(torch.cat(rows, -1), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())

    total = 0
    for rank in range(tp):  # row parallel: each rank quantizes its own slice of x, partial sums add up
        shard = parallel.shard_modelopt(**ckpt, tp_size=tp, rank=rank, mode="row")
        layer = fp4linear.Linear.from_modelopt(**shard, backend="triton")
        assert layer.in_features == parallel.partition(k, tp)[rank][1] - parallel.partition(k, tp)[rank][0]
        total = total + layer(parallel.split_last_dim(x, tp, rank))
    got = total + ckpt["bias"]
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def test_too_many_ranks_for_the_blocks():
    ckpt, _ = modelopt_checkpoint(16, 48)
    with pytest.raises(ValueError, match="cannot split 48"):
        parallel.shard_modelopt(**ckpt, tp_size=4, rank=0, mode="row")


def _mlp_worker(rank, world, port, hidden, inter):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        up, _ = modelopt_checkpoint(inter, hidden, bias=True, seed=1)
        down, _ = modelopt_checkpoint(hidden, inter, bias=True, seed=2)
        up["bias"], down["bias"] = up["bias"].float(), down["bias"].float()
        torch.manual_seed(0)
        x = torch.randn(7, hidden) * 2
        want = full_layer(down)(torch.relu(full_layer(up)(x)))

        col = parallel.ColumnParallelLinear.from_modelopt(**up, backend="triton")
        row = parallel.RowParallelLinear.from_modelopt(**down, backend="triton")
        got = row(torch.relu(col(x)))  # the column shard is exactly the row layer's input shard
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
        gathered = parallel.ColumnParallelLinear.from_modelopt(**up, backend="triton", gather_output=True)(x)
        torch.testing.assert_close(gathered, full_layer(up)(x), rtol=1e-5, atol=1e-5)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world, hidden, inter", [(2, 48, 464), (4, 64, 1360)])  # 85 blocks: 21,21,21,22
def test_gloo_tensor_parallel_mlp(world, hidden, inter):
    mp.spawn(_mlp_worker, args=(world, free_port(), hidden, inter), nprocs=world, join=True)
