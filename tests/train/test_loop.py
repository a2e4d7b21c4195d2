"""train.loop on a toy task whose loss is known in advance (a batch's loss is its mean value)."""

import json
import os

import torch
from safetensors.torch import save_file

from train.config import RunConfig
from train.dataset import EpochSampler
from train.loop import TrainingData, TrainingTask, run_training


class _Values(torch.utils.data.Dataset):
    def __getitem__(self, key):
        return torch.tensor([float(key % 4)])  # records 0, 1, 2, 3, in order every epoch


class _MeanTask(TrainingTask):
    description = "toy"

    def build(self, accelerator):
        return torch.nn.Linear(1, 1, bias=False)

    def param_groups(self, module):
        return [{"name": "all", "params": list(module.parameters()), "lr": 0.0}]

    def scheduler(self, optimizer, max_steps):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def train_data(self):
        return TrainingData(dataset=_Values(), sampler=EpochSampler(4, shuffle=False), collate_fn=torch.stack)

    def loss(self, model, batch):
        return model(batch).sum() * 0 + batch.mean(), {}

    def save(self, module, folder, state_dict):
        save_file({k: v.contiguous() for k, v in state_dict.items()}, os.path.join(folder, "model.safetensors"))


def test_the_logged_loss_of_an_accumulated_step_is_the_mean_over_its_micro_batches(tmp_path):
    run = RunConfig(output_dir=str(tmp_path / "run"), max_steps=4, batch_size=1, grad_accum=2, log_every=1,
                    save_every=10, eval_every=10)
    result = run_training(_MeanTask(), run, force_cpu=True)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    # micro-batches 0,1 | 2,3 | 0,1 | 2,3: a step's loss is their mean, not the last one's
    assert [row["loss"] for row in rows] == [0.5, 2.5, 0.5, 2.5]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert result.steps == 4 and result.last_loss == 2.5
    assert os.path.isfile(os.path.join(result.final_dir, "model.safetensors"))
