"""Two CPU processes with gloo under torchrun, through `edgederm train --nproc 2`:
both ranks must end with identical weights, each having seen half the batches;
--batch-size is the global batch (each process takes half of it)."""
import json
import os
import subprocess
import sys

from edgederm.data.release import read_release


def test_two_gloo_processes_train_in_lockstep(synthetic_release, tmp_path):
    run = tmp_path / "ddp"
    epochs, batch = 2, 4
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "edgederm.cli", "train", "--nproc", "2", "--data", str(synthetic_release),
         "--out", str(run), "--preset", "tiny", "--img-size", "64", "--epochs", str(epochs), "--batch-size",
         str(batch), "--swa-epochs", "1", "--warmup-epochs", "0", "--quiet"],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    ranks = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    n_train = len(read_release(synthetic_release).split("train"))
    per_rank_samples, per_rank_batch = n_train // 2, batch // 2     # DistributedSampler(drop_last=True)
    for r in ranks:
        assert r["world_size"] == 2
        assert r["samples"] == epochs * (per_rank_samples // per_rank_batch) * per_rank_batch
        assert r["batches"] == epochs * (per_rank_samples // per_rank_batch)
    # Each optimiser step saw one global batch of 2 x 2 = 4, as one process with --batch-size 4 would.
    assert ranks[0]["batches"] == ranks[1]["batches"]
    assert "global batch 4 = 2 processes x 2" in result.stdout + result.stderr
    assert (run / "model.safetensors").is_file()
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
