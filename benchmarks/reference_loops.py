"""The ProtoNet training loops a user would write without fewshot, as references for ``bench train``.

Two loops over the same Conv-4 (an ``nn.Sequential`` of four [``nn.Conv2d`` 3×3 padding 1, ``nn.BatchNorm2d``,
ReLU, ``nn.MaxPool2d(2)``] blocks and a flatten), Adam, class prototypes as mean support embeddings, logits the
negative squared Euclidean distances, cross-entropy, one forward of support and query together (Snell et al.,
NeurIPS 2017, arXiv 1703.05175):

* ``plain``: the tuned loop of issue 13: model and input in the channels-last memory format (the lever of
  ``../shared/docs/cpu-performance.md``), under the same allocator settings as the process;
* ``default``: the learn2learn-style default: contiguous (NCHW) model and input. Run in the same process, so it
  shares the process's allocator; a user's default process also lacks the glibc malloc tunables that
  ``run_episode.py`` sets, which ``cpu-performance.md`` measured at another 1.4–1.9× on large steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from episodes.episode import Episode

__all__ = ["REFERENCE_LOOPS", "ReferenceProtoNet", "conv4_sequential"]

#: Reference loop name → whether it uses the channels-last memory format.
REFERENCE_LOOPS: dict[str, bool] = {"plain": True, "default": False}


def conv4_sequential(in_channels: int, hidden: int = 64) -> nn.Sequential:
    """Conv-4 from torch layers: 4 × [Conv2d 3×3 pad 1, BatchNorm2d, ReLU, MaxPool2d 2], then flatten."""
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [
            nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
    return nn.Sequential(*layers, nn.Flatten())


class ReferenceProtoNet:
    """One reference ProtoNet training loop (see the module docstring).

    Args:
        in_channels: image channels.
        channels_last: convert model and inputs to the channels-last memory format.
        lr: Adam's learning rate.
        seed: seeds the model's initialization.
    """

    def __init__(self, in_channels: int, *, channels_last: bool, lr: float = 1e-3, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = conv4_sequential(in_channels)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def step(self, episode: Episode) -> float:
        """One training step on ``episode`` (class-major support and query); returns the loss."""
        n_support, way = episode.support_y.shape[0], episode.n_way
        x = torch.cat([episode.support_x, episode.query_x]).contiguous(memory_format=self.memory_format)
        z = self.model(x)
        prototypes = z[:n_support].reshape(way, n_support // way, -1).mean(1)
        logits = -(z[n_support:, None, :] - prototypes[None]).pow(2).sum(-1)
        loss = F.cross_entropy(logits, episode.query_y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()
