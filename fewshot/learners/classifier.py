"""Supervised pre-training of a backbone: a linear classifier over every training class, scored as ProtoNet.

Chen, Liu, Kira, Wang, Huang, "A Closer Look at Few-shot Classification", ICLR 2019, arXiv 1904.04232
("Baseline": train backbone + linear head with cross-entropy on all base classes, then adapt to novel classes);
Chen, Liu, Xu, Darrell, Wang, "Meta-Baseline: Exploring Simple Meta-Learning for Few-Shot Learning", ICCV 2021,
arXiv 2003.04390 (classifier pre-training followed by episodic meta-training of the same backbone).

Each training "episode" is a class-balanced mini-batch: ``n_way`` classes with ``n_shot + n_query`` images
each, drawn by the ordinary episodic sampler, so episode ``i`` stays a pure function of ``(seed, i)`` and the
trainer's budget, checkpoints and bit-exact resume apply unchanged. All its images go through one forward and
are classified among *all* ``n_classes`` training classes (the episode's support/query split is ignored).
Validation and meta-test score episodes exactly as :class:`~fewshot.learners.protonet.ProtoNet` does (nearest
prototype of the backbone's features); the head is used for training only. Fine-tune the result episodically
with ``learner.name: protonet`` and ``model.init_from: <this run>``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from episodes.episode import Episode
from fewshot.learners._registry import LEARNERS
from fewshot.learners.base import accuracy, check_episode, check_train_policy
from fewshot.learners.protonet import ProtoNet

__all__ = ["Classifier"]


@LEARNERS.register("classifier")
class Classifier(ProtoNet):
    """Backbone + linear head trained with cross-entropy over all training classes; predicts as ProtoNet.

    Args:
        backbone: feature extractor, ``(N, C, H, W)`` → ``(N, D)`` with ``D = backbone.out_features(image_size)``.
        n_classes: number of training classes (the head's outputs), e.g. 64 for miniImageNet's train split.
        image_size: side of the input images (sets ``D``); supplied by the framework.
        class_names: the training split's class names, in the order that defines the head's outputs; supplied
            by the framework when training (``None`` when the learner is built only to evaluate).
        distance, temperature, learn_temperature: ProtoNet's meta-test scoring (see
            :class:`~fewshot.learners.protonet.ProtoNet`).
        channels_last: convert input images to the channels-last memory format.
        n_way, in_channels: unused; accepted so that every learner can be built with the same call.

    Example:
        >>> from fewshot import backbones
        >>> learner = Classifier(backbones.create("conv4", in_channels=1), n_classes=3, image_size=28,
        ...                      class_names=("a", "b", "c"))
        >>> learner.head
        Linear(in_features=64, out_features=3, bias=True)
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        n_classes: int,
        image_size: int,
        class_names: Sequence[str] | None = None,
        distance: str = "euclidean",
        temperature: float | None = None,
        learn_temperature: bool = True,
        channels_last: bool = False,
        n_way: int | None = None,
        in_channels: int | None = None,
    ) -> None:
        super().__init__(
            backbone, distance=distance, temperature=temperature, learn_temperature=learn_temperature,
            channels_last=channels_last,
        )  # fmt: skip
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"classifier n_classes must be an int >= 2 (the training classes), got {n_classes!r}")
        self._class_index: dict[str, int] | None = None
        if class_names is not None:
            names = list(class_names)
            if len(names) != n_classes or len(set(names)) != n_classes:
                raise ValueError(
                    f"classifier n_classes={n_classes} but the training split has {len(set(names))} classes; set "
                    f"learner.kwargs.n_classes={len(set(names))}"
                )
            self._class_index = {name: k for k, name in enumerate(names)}
        self.head = nn.Linear(backbone.out_features(image_size), n_classes)

    def _global_labels(self, episode: Episode) -> Tensor:
        """Head indices ``(n_support + n_query,)`` of the episode's support then query images."""
        if self._class_index is None:
            raise RuntimeError(
                "this classifier was built without the training split's class names, so it cannot train; build it "
                "with class_names=split.class_names (the trainer does)"
            )
        try:
            per_class = torch.tensor([self._class_index[name] for name in episode.class_ids], dtype=torch.int64)
        except KeyError as exc:
            raise ValueError(
                f"episode {episode.index} holds class {exc.args[0]!r}, which is not one of the classifier's "
                f"{len(self._class_index)} training classes; train it on the split it was built for"
            ) from None
        per_class = per_class.to(episode.support_y.device, non_blocking=True)  # a staged copy: no wait for the device
        return per_class[torch.cat([episode.support_y, episode.query_y])]

    def meta_loss(self, episodes: Sequence[Episode], *, policy: str = "running") -> tuple[Tensor, dict[str, Tensor]]:
        """Mean cross-entropy over all images of ``episodes`` among the ``n_classes`` classes, and metrics.

        Args:
            episodes: class-balanced mini-batches (support and query images alike are training images).
            policy: ``"running"`` or ``"transductive"`` (batch statistics over the episode's images); ``"support"`` has
                no meaning without a support/query split and is refused.

        Returns:
            ``(loss, {"loss", "acc"})``: ``acc`` is the classification accuracy among all training classes (both
            detached 0-dim tensors, read by the caller when it needs them).
        """
        check_train_policy(policy)
        if policy == "support":
            raise ValueError(
                "the classifier learner trains on whole mini-batches; train.norm_policy='support' has no support "
                "set to take statistics from; use 'running' (or 'transductive')"
            )
        episodes = self._episodes(episodes)
        for ep in episodes:
            check_episode(ep)
        losses, all_logits, all_labels = [], [], []
        with self.mode(training=True, norm_policy=policy, frozen=False):
            for ep in episodes:
                labels = self._global_labels(ep)
                logits = self.head(self.backbone(self.prepare(torch.cat([ep.support_x, ep.query_x]))))
                losses.append(F.cross_entropy(logits, labels))
                all_logits.append(logits.detach())
                all_labels.append(labels)
        loss = torch.stack(losses).mean()
        return loss, {"loss": loss.detach(), "acc": accuracy(all_logits, all_labels)}
