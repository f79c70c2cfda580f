"""Data once per node (issue 24): the data module downloads in ``prepare_data``, which Lightning
runs in one process while the other DDP ranks wait, instead of every rank downloading into the
same folder in ``setup``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cnnstress.core.run_dir import read_metrics
from tests.conftest import ROOT, TINY_RUN


@pytest.mark.slow
@pytest.mark.parametrize("per_node", [True, False])
def test_two_ddp_processes_download_once(tmp_path, per_node):
    downloads = tmp_path / "downloads.txt"
    run = tmp_path / "run"
    env = {**os.environ, "CNNSTRESS_TEST_DOWNLOADS": str(downloads)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "count_downloads.py"), *TINY_RUN,
         f"dataset.root={tmp_path / 'torchvision-root'}", "dataset.download=true",
         f"dataset.prepare_data_per_node={str(per_node).lower()}", "trainer=ddp",
         "trainer.accelerator=cpu", "trainer.devices=2", "callbacks.gradcam=null",
         f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(downloads.read_text().splitlines()) == 1  # before issue 24: one per rank
    assert (run / "train_ddp_process_1.log").is_file()  # the second rank ran, and read the data
    assert read_metrics(run)["train/effective_batch_size"] == 2 * 16
