"""Data-parallel training on several GPUs or nodes (``torch.distributed``, DDP).

The same training code runs as one process or as many: launched by ``torchrun`` (or
``python -m torch.distributed.run``) each process reads ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` from its environment, joins a process
group (NCCL on GPUs, Gloo on CPUs), wraps the trainable networks in
:class:`torch.nn.parallel.DistributedDataParallel` and draws *different* random patches
(the patch sampler is seeded with ``seed + rank``). Gradients are averaged across ranks,
so every rank holds identical weights after every step; only rank 0 writes checkpoints,
``metrics.jsonl`` and ``status.json``. The effective batch size is
``batch_size x WORLD_SIZE``. Validation is split across ranks and reduced. A stop request
(``STOP`` file or SIGTERM on any rank) is reduced every step so all ranks stop together,
save one checkpoint and exit.

One machine, 4 GPUs::

    torchrun --standalone --nproc_per_node=4 -m brainldm.train.runner \\
        --stage autoencoder --config thesis-3d --data /data/BraTS2023 --run-dir runs/ae

or from Python / the CLI, in the background: ``launch_background(..., gpus=4)``.

Several nodes with SLURM (2 nodes x 4 GPUs; save as ``train.sbatch``, ``sbatch train.sbatch``)::

    #!/bin/bash
    #SBATCH --job-name=brainldm-ldm
    #SBATCH --nodes=2
    #SBATCH --ntasks-per-node=1
    #SBATCH --gpus-per-node=4
    #SBATCH --cpus-per-task=16
    #SBATCH --time=48:00:00
    #SBATCH --signal=TERM@300          # SIGTERM 5 min before the time limit -> checkpoint
    export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    export MASTER_PORT=29500
    srun torchrun --nnodes=$SLURM_NNODES --nproc_per_node=4 \\
        --rdzv_id=$SLURM_JOB_ID --rdzv_backend=c10d --rdzv_endpoint=$MASTER_ADDR:$MASTER_PORT \\
        -m brainldm.train.runner --stage denoiser --config thesis-3d \\
        --data /data/BraTS2023 --run-dir runs/ldm --autoencoder runs/ae --resume

``--resume`` makes the job restartable: resubmitting continues from
``<run>/checkpoints/last.pt`` at the same step (a run with no checkpoint yet starts fresh).
The run folder must be on a file system that all nodes see.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistributedContext:
    """Where this process sits in a (possibly one-process) training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (no-op for one process). Returns a new tensor."""
        values = values.detach().clone()
        if self.enabled:
            device = _reduce_device(self.backend)
            moved = values.to(device)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            values = moved.to(values.device)
        return values

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is true on any rank."""
        if not self.enabled:
            return bool(flag)
        return bool(self.all_reduce_sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def shutdown(self) -> None:
        if self.initialised_here and dist.is_initialized():
            dist.destroy_process_group()
            self.initialised_here = False


def _reduce_device(backend: str) -> torch.device:
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def setup_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistributedContext:
    """Join the process group described by the environment (``torchrun``), if any.

    Without ``WORLD_SIZE`` > 1 this returns a one-process context and touches nothing.
    On CUDA each process uses GPU ``LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if world_size <= 1:
        return DistributedContext()
    if dist.is_initialized():
        return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                                  backend=str(dist.get_backend()))
    use_cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    backend = "nccl" if use_cuda else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend=backend, rank=rank, world_size=world_size,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend,
                              initialised_here=True)


def wrap_ddp(module: torch.nn.Module, context: DistributedContext, device: torch.device) -> torch.nn.Module:
    """Wrap a module with trainable parameters in DDP (returns it unchanged for one process)."""
    if not context.enabled or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        return DistributedDataParallel(module, device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(module)


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper (or the module itself)."""
    return getattr(module, "module", module)
