"""The README's own training loop, data-parallel on 2 processes (torch.distributed, gloo on CPUs).

    torchrun --nproc-per-node 2 examples/distributed_kfac.py   # any launcher that sets RANK,
    WORLD_SIZE, ...
    python examples/distributed_kfac.py                        # starts its 2 processes itself

Every process builds the same model and draws the same global batch; each trains on its strided
shard of it. ``KFAC`` finds the initialised process group and averages what the global batch
needs: gradients, curvature statistics, the quadratic model's products, ``rho``; every process
applies the same update (docs/distributed.md).
"""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import natgrad
import toy_models
from natgrad.distributed.launch import free_port, torchrun_environment


def train(steps: int = 50, global_batch: int = 64) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same model, batches and VAE noise on every process
    images = toy_models.bars().flatten(1)  # (256, 64) binary images
    model = natgrad.VAE([64, 16, 4])
    optimizer = natgrad.KFAC(model, damping=1.0)  # detects the process group
    for step in range(steps):
        batch = images[torch.randint(len(images), (global_batch,))]
        noise = torch.randn(global_batch, model.latent_dim)
        x, eps = batch[rank::world], noise[rank::world]  # this process's shard of the global batch

        def closure():
            optimizer.zero_grad()
            loss = natgrad.build_loss(model, x, eps=eps)  # negative ELBO of the shard
            loss.backward()
            return loss

        optimizer.step(closure)
    if rank == 0:  # every process holds the same parameters
        record = optimizer.last_step_record
        print(
            f"{world} processes, negative ELBO of the last global batch after {steps} steps: "
            f"{record.objective:.2f} nats"
        )


def process(rank: int, world: int, port: int) -> None:
    os.environ.update(torchrun_environment(rank, world, port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    train()
    dist.barrier()  # every process done before any tears down its connections
    dist.destroy_process_group()


if __name__ == "__main__":
    if "WORLD_SIZE" in os.environ:  # started by torchrun
        dist.init_process_group("gloo")
        train()
        dist.barrier()
        dist.destroy_process_group()
    else:
        mp.spawn(process, args=(2, free_port()), nprocs=2)
