"""Data-parallel training: two CPU processes (gloo) end with identical weights."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from brainldm.train.rundir import RunDir
from brainldm.train.state import load_checkpoint
from brainldm.train.toy import tiny_overrides, write_toy_dataset


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, data_dir: str, tmp: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from brainldm.train.autoencoder import AutoencoderTrainer
    from brainldm.train.config import load_config
    from brainldm.train.denoiser import DenoiserTrainer
    from brainldm.train.distributed import setup_distributed

    overrides = [*tiny_overrides(max_steps=3, every=3), "autoencoder.adversarial.weight=0.1",
                 "autoencoder.adversarial.start_step=1",
                 "autoencoder.adversarial.discriminator={channels: 8, num_layers: 2}"]
    config = load_config("cpu-small", overrides)
    context = setup_distributed("cpu")
    assert context.enabled and context.rank == rank
    try:
        # Both stages in one process group (as the "all" stage does).
        trainer = AutoencoderTrainer(config, data_dir, os.path.join(tmp, "ae"), context=context, show_progress=False)
        trainer.run()
        weights = {"net": trainer.autoencoder.state_dict(), "disc": trainer.discriminator.state_dict(),
                   "first_patch": trainer.sampler.draw()}
        torch.save(weights, os.path.join(tmp, f"autoencoder-rank{rank}.pt"))
        trainer = DenoiserTrainer(config, data_dir, os.path.join(tmp, "ldm"), autoencoder=os.path.join(tmp, "ae"),
                                  context=context, show_progress=False)
        trainer.run()
        weights = {"net": trainer.denoiser.state_dict(), "ema": trainer.ema.state_dict()["shadow"],
                   "first_patch": trainer.sampler.draw()}
        torch.save(weights, os.path.join(tmp, f"denoiser-rank{rank}.pt"))
    finally:
        context.shutdown()


@pytest.mark.timeout(240)
def test_two_process_gloo_training_keeps_ranks_identical(tmp_path):
    data_dir = tmp_path / "data"
    write_toy_dataset(data_dir, count=4, shape=(40, 40, 40), seed=3)
    mp.spawn(_worker, args=(2, _free_port(), str(data_dir), str(tmp_path)), nprocs=2, join=True)
    for stage, folder in (("autoencoder", "ae"), ("denoiser", "ldm")):
        rank0 = torch.load(tmp_path / f"{stage}-rank0.pt", weights_only=False)
        rank1 = torch.load(tmp_path / f"{stage}-rank1.pt", weights_only=False)
        for part in [k for k in rank0 if k != "first_patch"]:
            for name, value in rank0[part].items():
                assert torch.equal(value, rank1[part][name]), (stage, part, name)
        # Ranks draw different patches (seeded with the rank).
        assert rank0["first_patch"] != rank1["first_patch"]
        run = RunDir(tmp_path / folder)
        status = run.read_status()
        assert status.state == "finished" and status.step == 3 and status.world_size == 2
        checkpoint = load_checkpoint(run.last_checkpoint)
        assert checkpoint["world_size"] == 2 and len(checkpoint["rng"]) == 2
        for name, value in checkpoint["networks"][stage].items():
            assert torch.equal(value, rank0["net"][name]), name
