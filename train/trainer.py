"""ChatRex stages 1-3 as a task of the one training loop (:mod:`train.loop`).

:func:`train` runs a stage from a :class:`~train.config.TrainConfig`. It prints the
trainable-parameter table and the optimizer groups, and the loop shows a tqdm bar, evaluates and
checkpoints periodically (atomically), resumes exactly, checkpoints on Ctrl-C, and ends with a
``save_pretrained`` directory ``OUTPUT/final`` that ``ChatRexForConditionalGeneration``
loads. When the starting model has a proposal network (``upn/``, as a bundled model does),
``final/upn`` is a copy of it, so ``ChatRexPredictor.from_pretrained(OUTPUT/final)`` and
``chatrex detect --model OUTPUT/final`` propose boxes as the starting model did.
"""

from __future__ import annotations

import os

import torch
import yaml
from transformers import get_scheduler

from chatrex.processing_chatrex import IGNORE_INDEX
from chatrex.utils.jsonl import JsonlRecords

from .answer_metrics import index_accuracy
from .checkpointing import save_pretrained_into
from .config import TrainConfig, to_dict
from .dataset import ChatRexCollator, ChatRexDataset
from .feature_cache import ConcatFeatureCache, FeatureCache, build_cache
from .loop import TrainingData, TrainingTask, TrainResult, run_training
from .model_loading import load_model_and_processor, upn_folder
from .stages import apply_stage, build_param_groups, format_counts
from .training_data import build_train_data, chatrex_dataset

__all__ = ["ChatRexTask", "evaluate", "train"]


def _proposal_fn(cfg: TrainConfig):
    if not cfg.data.upn_model:
        return None
    from chatrex.convert.upn import load_upn_predictor  # optional: only runs that propose on the fly need it

    predictor = load_upn_predictor(cfg.data.upn_model)
    return lambda image: predictor.predict(image, prompt_type="both").boxes


def _feature_caches(cfg: TrainConfig, model, processor, accelerator) -> dict:
    """``{records path: FeatureCache}`` for every train and eval file (built on the main
    process on first use; the others wait and then read it)."""
    if not cfg.data.feature_cache:
        return {}
    if cfg.data.upn_model:
        raise ValueError("data.feature_cache cannot be combined with data.upn_model (on-the-fly proposals): precompute proposals into the records")
    folders = {}
    model.to(accelerator.device)  # encode on the GPU when there is one (prepare() would move it later anyway)
    with accelerator.main_process_first():
        for path in dict.fromkeys(cfg.data.train_paths() + cfg.data.eval):
            folders[path] = build_cache(path, model, processor, use_proposals=cfg.data.use_record_proposals,
                                        progress=accelerator.is_local_main_process)
    caches = {path: FeatureCache(folder) for path, folder in folders.items()}
    if cfg.data.oracle_object_features:
        from .diagnostics.oracle_features import OracleFeatureCache, OracleFeatures

        oracle = OracleFeatures(model.config, processor.image_processor, parent=cfg.data.oracle_parent_features)
        caches = {path: OracleFeatureCache(cache, JsonlRecords([path]), oracle) for path, cache in caches.items()}
    return caches


def _eval_dataset(cfg: TrainConfig, proposal_fn, caches: dict | None = None) -> ChatRexDataset:
    cache = ConcatFeatureCache([caches[p] for p in cfg.data.eval]) if caches else None
    return chatrex_dataset(cfg, JsonlRecords(cfg.data.eval), proposal_fn, cache)


def _model_inputs(batch) -> dict:
    return {k: v for k, v in batch.items() if k != "skipped"}


def _to_device(batch: dict, device) -> dict:
    return {k: [t.to(device) for t in v] if k in ("boxes", "object_pooled") else v.to(device) for k, v in _model_inputs(batch).items()}


@torch.no_grad()
def evaluate(model, loader, device) -> float:
    """Mean loss over ``loader`` (token-weighted per batch), computed identically on every rank."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in loader:
        batch = _to_device(batch, device)
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(model(**_model_inputs(batch)).loss) * n
        count += n
    model.train(was_training)
    return total / max(count, 1)


class ChatRexTask(TrainingTask):
    """A ChatRex stage (1, 2 or 3) of ``cfg``: the model and processor from ``model.init``, the
    stage's trainable modules and learning-rate groups, the record mixture, the LLM's loss."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.description = f"stage {cfg.stage}"

    def build(self, accelerator):
        cfg = self.cfg
        if accelerator.is_main_process:
            with open(os.path.join(cfg.train.output_dir, "config.yaml"), "w") as f:
                yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
        model, self.processor = load_model_and_processor(cfg.model.init, cfg.model.tokenizer, cfg.model.config_overrides)
        self.upn = upn_folder(cfg.model.init)  # travels into final/ (a bundle and every stage after it keep their UPN)
        if cfg.train.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        self.caches = _feature_caches(cfg, model, self.processor, accelerator)
        if self.caches:
            model.config.vision_high_no_grad = True  # the towers are frozen: a later run on pixels keeps them so
        counts = apply_stage(model, cfg.stage, freeze_vision=bool(self.caches))
        accelerator.print(f"stage {cfg.stage}: trainable parameters per module\n{format_counts(counts)}")
        self.zero_hidden_size = model.config.text_config.hidden_size
        self.object_token_ids = model.config.object_token_ids
        self.proposal_fn = _proposal_fn(cfg)
        # DeepSpeed needs every process to run the same modules in every step (ZeRO-3 gathers each
        # module's weights collectively): a batch of text-only samples still encodes an image.
        self.collator = ChatRexCollator(self.processor, always_image=bool(cfg.train.deepspeed))
        self.eval_loader = None
        if cfg.data.eval:
            eval_set = _eval_dataset(cfg, self.proposal_fn, self.caches)
            subset = torch.utils.data.Subset(eval_set, range(min(cfg.data.eval_samples, len(eval_set))))
            self.eval_loader = torch.utils.data.DataLoader(subset, batch_size=cfg.train.batch_size, collate_fn=self.collator)
        return model

    def param_groups(self, module):
        return build_param_groups(module, self.cfg.optim.lr, self.cfg.optim.weight_decay)

    def scheduler(self, optimizer, max_steps):
        return get_scheduler(self.cfg.optim.scheduler, optimizer, num_warmup_steps=self.cfg.optim.warmup_steps,
                             num_training_steps=max_steps)

    def train_data(self):
        cfg = self.cfg
        train_cache = ConcatFeatureCache([self.caches[p] for p in cfg.data.train_paths()]) if self.caches else None
        data = build_train_data(cfg, self.proposal_fn, train_cache)
        return TrainingData(data.dataset, data.sampler, self.collator, data.report)

    def loss(self, model, batch):
        outputs = model(**_model_inputs(batch))
        metrics = {}
        index_acc = index_accuracy(outputs.logits.detach(), batch["labels"], self.object_token_ids)
        if index_acc is not None:
            metrics["index_acc"] = index_acc  # this process's batch only
        return outputs.loss, metrics

    def evaluate(self, module, device):
        if self.eval_loader is None:
            return {}
        return {"loss": evaluate(module, self.eval_loader, device)}

    def save(self, module, folder, state_dict):
        save_pretrained_into(folder, module, self.processor, self.upn, state_dict)


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Run the stage ``cfg`` describes (module doc); ``resume`` continues from the newest checkpoint."""
    cfg.validate()
    return run_training(ChatRexTask(cfg), cfg.train, max_grad_norm=cfg.optim.max_grad_norm,
                        num_workers=cfg.data.num_workers, resume=resume)
