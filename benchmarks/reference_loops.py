"""The ProtoNet training loops a user would write without fewshot, as references for ``bench train``.

Two loops over the same Conv-4 (an ``nn.Sequential`` of four [``nn.Conv2d`` 3×3 padding 1, ``nn.BatchNorm2d``,
ReLU, ``nn.MaxPool2d(2)``] blocks and a flatten), Adam, class prototypes as mean support embeddings, logits the
negative squared Euclidean distances, cross-entropy, one forward of support and query together (Snell et al.,
NeurIPS 2017, arXiv 1703.05175):

* ``plain``: the tuned loop of issue 13: model and input in the channels-last memory format (the lever of
  ``../shared/docs/cpu-performance.md``), under the same allocator settings as the process;
* ``plain[inplace]``: ``plain`` with ``nn.ReLU(inplace=True)``, as fewshot's Conv-4 runs its ReLU (one
  activation-sized write and read less per block): the tuned loop at its best;
* ``default``: the learn2learn-style default: contiguous (NCHW) model and input. Run in the same process, so it
  shares the process's allocator; a user's default process also lacks the glibc malloc tunables that
  ``run_episode.py`` sets, which ``cpu-performance.md`` measured at another 1.4–1.9× on large steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from episodes.episode import Episode

__all__ = ["REFERENCE_LOOPS", "ReferenceMAML", "ReferenceProtoNet", "conv4_sequential"]

#: Reference loop name → (channels-last memory format, in-place ReLU).
REFERENCE_LOOPS: dict[str, tuple[bool, bool]] = {
    "plain": (True, False),
    "plain[inplace]": (True, True),
    "default": (False, False),
}


def conv4_sequential(in_channels: int, hidden: int = 64, *, inplace_relu: bool = False) -> nn.Sequential:
    """Conv-4 from torch layers: 4 × [Conv2d 3×3 pad 1, BatchNorm2d, ReLU, MaxPool2d 2], then flatten."""
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [
            nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=inplace_relu),
            nn.MaxPool2d(2),
        ]
    return nn.Sequential(*layers, nn.Flatten())


class ReferenceProtoNet:
    """One reference ProtoNet training loop (see the module docstring).

    Args:
        in_channels: image channels.
        channels_last: convert model and inputs to the channels-last memory format.
        inplace_relu: run the ReLUs in place.
        lr: Adam's learning rate.
        seed: seeds the model's initialization.
        device: where the model runs (the episodes must be there too).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        channels_last: bool,
        inplace_relu: bool = False,
        lr: float = 1e-3,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        torch.manual_seed(seed)
        self.model = conv4_sequential(in_channels, inplace_relu=inplace_relu).to(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def step(self, episode: Episode) -> float:
        """One training step on ``episode`` (class-major support and query); returns the loss."""
        return self.train_step(episode).item()

    def train_step(self, episode: Episode) -> torch.Tensor:
        """One training step; returns the detached loss without reading it (no host synchronisation)."""
        n_support, way = episode.support_y.shape[0], episode.n_way
        x = torch.cat([episode.support_x, episode.query_x]).contiguous(memory_format=self.memory_format)
        z = self.model(x)
        prototypes = z[:n_support].reshape(way, n_support // way, -1).mean(1)
        logits = -(z[n_support:, None, :] - prototypes[None]).pow(2).sum(-1)
        loss = F.cross_entropy(logits, episode.query_y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class ReferenceMAML:
    """Second-order MAML as a plain ``torch.func`` loop (Finn et al., ICML 2017, arXiv 1703.03400).

    Conv-4 of ``hidden`` filters (:func:`conv4_sequential`, ``nn.BatchNorm2d`` on batch statistics) and a
    linear head; per task, ``inner_steps`` SGD steps on the support loss through
    ``torch.func.functional_call`` with ``create_graph=True``, then the query loss of the adapted weights; the
    mean over the meta-batch is backpropagated and Adam takes the step.

    Args:
        in_channels: image channels.
        n_way: classes per task (the head's outputs).
        image_size: square image side (sizes the head).
        hidden: filters per conv layer.
        inner_lr: inner-loop step size.
        inner_steps: inner-loop steps per task.
        device: where the model runs.
    """

    def __init__(
        self, in_channels: int, n_way: int, *, image_size: int = 84, hidden: int = 32, inner_lr: float = 0.01,
        inner_steps: int = 5, lr: float = 1e-3, seed: int = 0, device: torch.device | str = "cpu",
    ) -> None:  # fmt: skip
        torch.manual_seed(seed)
        side = image_size
        for _ in range(4):
            side //= 2
        self.model = nn.Sequential(conv4_sequential(in_channels, hidden), nn.Linear(hidden * side * side, n_way))
        for m in self.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.track_running_stats = False  # batch statistics throughout, as the fewshot MAML configs
                m.running_mean = m.running_var = None
        self.model = self.model.to(device)
        self.inner_lr, self.inner_steps = inner_lr, inner_steps
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def _task_loss(self, episode: Episode) -> torch.Tensor:
        from torch.func import functional_call

        fast = dict(self.model.named_parameters())
        for _ in range(self.inner_steps):
            loss = F.cross_entropy(functional_call(self.model, fast, (episode.support_x,)), episode.support_y)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {k: w - self.inner_lr * g for (k, w), g in zip(fast.items(), grads, strict=True)}
        return F.cross_entropy(functional_call(self.model, fast, (episode.query_x,)), episode.query_y)

    def train_step(self, episodes: list[Episode]) -> torch.Tensor:
        """One meta-step over the tasks ``episodes``; returns the detached mean query loss (not read)."""
        loss = torch.stack([self._task_loss(ep) for ep in episodes]).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()
