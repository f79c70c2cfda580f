"""The fast recipe under DDP (issue 24): FastNet's whitening bias stops training through the
optimizer, so DDP keeps every parameter in every backward, past the freeze epoch, on 2 CPU
processes (gloo); on one process the new freeze gives exactly the old one's results."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cnnstress.app.train import run_training
from cnnstress.core.run_dir import read_metrics
from tests.conftest import ROOT, compose_train_config
from tests.test_fast_recipe import FAST_TINY
from tests.test_training import model_metrics

RECORD = "+callbacks.bias._target_=tests.device_helpers.RecordWhitenBias"


@pytest.mark.slow
def test_fast_recipe_trains_past_the_freeze_epoch_under_ddp(tiny_cifar10_zip, tmp_path):
    run = tmp_path / "ddp"
    # 128 training images on 2 ranks of 16: 4 steps per epoch; lookahead every 2 steps.
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *FAST_TINY, f"dataset.root={tiny_cifar10_zip}",
         "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
         "module.channels_last=false", RECORD, f"+callbacks.bias.path={run / 'whiten_bias.json'}",
         f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = read_metrics(run)  # the run finished: it trained 3 epochs, tested, wrote files
    assert metrics["train/effective_batch_size"] == 32 and "test/acc" in metrics
    epochs = json.loads((run / "whiten_bias.json").read_text())
    assert [epoch for epoch, _ in epochs] == [0, 1, 2]
    biases = [bias for _, bias in epochs]
    assert any(b != 0 for b in biases[0])  # trained in its one epoch (it starts at 0)
    # frozen afterwards (epoch 0 ends on a lookahead update, so the training weights equal the
    # average then, and the average of a constant stays put)
    assert biases[1] == biases[0] and biases[2] == biases[0]


def test_on_one_process_the_optimizer_freeze_equals_the_requires_grad_freeze(
    tiny_cifar10_zip, tmp_path
):
    runs = {}
    for name, extra in (("optimizer", ()), ("requires_grad", ("+callbacks.old._target_="
                        "tests.device_helpers.RequiresGradFreeze",))):  # fmt: skip
        out = tmp_path / name
        cfg = compose_train_config(
            out, [*FAST_TINY, f"dataset.root={tiny_cifar10_zip}", "seed=7", *extra]
        )
        runs[name] = model_metrics(run_training(cfg))
    assert runs["optimizer"] == runs["requires_grad"]
    assert len(runs["optimizer"]) > 20
