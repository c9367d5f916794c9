"""Under DistributedDataParallel every rank calibrates on its own shard, and DDP's buffer
broadcast (each forward) leaves every rank with rank 0's fit: one model, not one per rank."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from emm_ray.data.batch import Batch
from emm_ray.train.loop import TrainConfig, fit
from tests.train.test_loop import TinyNet, planted, sources


class RankCalibrated(TinyNet):
    """`calibrate` stores a value that differs per rank, as a fit on a rank's own shard would."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fitted_value", torch.zeros(()))

    def calibrate(self, batches) -> None:
        rows = sum(len(batch) for batch in batches)
        self.fitted_value.fill_(float(rows + dist.get_rank()))


def train_on_rank(rank: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        module = nn.parallel.DistributedDataParallel(RankCalibrated())
        train, _ = planted(600, seed=1 + rank)
        validation, _ = planted(300, seed=10)
        shard = Batch(validation.sparse, validation.dense, validation.labels)
        config = TrainConfig(
            epochs=1, batch_size=100, patience=None, num_threads=1, validate_initial=True
        )
        fit(module, *sources(train, shard.slice(slice(rank * 10, None)), config), [0], config)
        results[rank] = float(module.module.fitted_value)
    finally:
        dist.destroy_process_group()


def test_every_rank_ends_with_rank_zeros_calibration() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    with context.Manager() as manager:
        results = manager.dict()
        workers = [
            context.Process(target=train_on_rank, args=(rank, port, results)) for rank in (0, 1)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=240)
        assert [w.exitcode for w in workers] == [0, 0]
        assert dict(results) == {0: 300.0, 1: 300.0}, "rank 1 saw 290 rows but keeps rank 0's fit"
