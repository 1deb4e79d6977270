"""``model.init_from``: a run starts from another run's backbone (pre-training, then episodic fine-tuning)."""

from __future__ import annotations

import pytest
import torch

from episodes.cache import sha256_path
from fewshot.errors import ConfigError
from fewshot.training import train
from fewshot.training.build import build_learner
from fewshot.training.checkpoint import load_checkpoint
from fewshot.training.init_from import load_backbone_weights
from fewshot.training.run_dir import read_json

PRETRAIN = ("learner.name=classifier", "learner.kwargs={n_classes: 8, distance: cosine}", "train.n_way=4")


def test_pretrain_then_finetune_starts_from_the_pretrained_backbone(tmp_path, splits, tiny_config):
    pre = tmp_path / "pre"
    train(tiny_config(*PRETRAIN), pre, train_split=splits[0], val_split=splits[1], runs_root=tmp_path, quiet=True)
    best = pre / "checkpoints" / "best.pt"
    source = {k: v for k, v in load_checkpoint(best)["model"].items() if k.startswith("backbone.")}

    # one step with a negligible learning rate: the parameters stay where they were loaded (the running moments move)
    cfg = tiny_config(f"model.init_from={pre}", "train.episodes=1", "train.lr=1e-12", "train.val_every=1")
    fine = tmp_path / "fine"
    train(cfg, fine, train_split=splits[0], val_split=splits[1], runs_root=tmp_path, quiet=True)
    record = read_json(fine / "init_from.json")
    assert record == {"path": str(best), "sha256": sha256_path(best), "tensors": len(source)}
    loaded = load_checkpoint(fine / "checkpoints" / "last.pt")["model"]
    params = {name for name, _ in build_learner(cfg, 3, splits[0].image_shape).named_parameters()}
    for key, value in source.items():
        if key in params:
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=1e-9, msg=key)
    assert not any(k.startswith("head.") for k in loaded)


def test_a_backbone_that_does_not_fit_is_refused_naming_the_tensors(tmp_path, splits, tiny_config):
    pre = tmp_path / "pre"
    train(tiny_config(*PRETRAIN), pre, train_split=splits[0], val_split=splits[1], runs_root=tmp_path, quiet=True)
    wider = build_learner(tiny_config("model.backbone_kwargs={hidden: 16}"), 3, splits[0].image_shape)
    with pytest.raises(ConfigError, match=r"does not fit.*other shape: .*conv"):
        load_backbone_weights(wider, pre)
    with pytest.raises(ConfigError, match="no checkpoint at"):
        load_backbone_weights(wider, tmp_path / "nowhere")
