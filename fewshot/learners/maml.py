"""MAML, first-order MAML and ANIL, written with torch.func (the module's parameters are never mutated).

Finn, Abbeel, Levine, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017,
arXiv 1703.03400. ANIL: Raghu, Raghu, Bengio, Vinyals, "Rapid Learning or Feature Reuse? Towards Understanding
the Effectiveness of MAML", ICLR 2020, arXiv 1909.09157.

How the inner loop is written. ``params = dict(named_parameters())``; every forward is
``functional_call(self, (adapted, fixed, buffers), x, strict=True)``; the inner gradient is
``torch.func.grad(support_loss)(adapted)`` and the SGD step a dict comprehension. Second order (the default):
the outer ``backward()`` differentiates through ``torch.func.grad``. First order: the inner gradient is taken at
detached parameters, so the query gradient at the adapted parameters is applied to the meta-parameters as is.

How normalization state is handled: state in, next state out, nothing written during the tasks' forwards.
Every forward reads the model's buffers through ``functional_call``'s buffer dictionary and runs with state
updates off, so every task of the meta-step reads the same state (no snapshot is needed; a layer that reads its
state in a differentiable pass keeps a copy, SWBN's ``W``, so the commit below leaves the outer backward valid).
After the meta-batch, the next state is computed as a value by
``fewshot.norms.advance`` (one gradient-free train-mode forward of the backbone at the meta-parameters, on copies
of the buffers) and written once by ``fewshot.norms.commit``: by default one update per meta-step on the
meta-batch's support sets joined (``norm_state_update="meta_batch"``, norms-spec §2.14: one W update per outer
iteration, so SWBN's rate α means the same per optimizer step whatever the meta-batch), or one update per task in
task order, each from the state the previous one produced (``"task"``: fewshot 0.1.0's behaviour). Why a state
pass rather than merging the tasks' statistics: beyond the first norm layer, a layer's input in a forward of the
joined supports differs from its inputs in the tasks' forwards, so merged per-task statistics are not the
statistics of the joined supports (docs/norm-state.md; tested). Under the ``support`` policy, the statistics of a
support forward at the adapted parameters are passed to the query forward (``fewshot.norms.collect``/``using``).
With ``vmap_tasks=True`` the meta-batch's tasks run as one ``torch.func.vmap`` over tasks of equal shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

import fewshot.norms as norms
from episodes.episode import Episode
from fewshot.learners._registry import LEARNERS
from fewshot.learners.base import (
    Learner,
    accuracy,
    check_episode,
    check_train_policy,
    joined_batch_stats,
    predict_norm_policy,
    rowwise,
)
from fewshot.norms.policy import Policy
from fewshot.norms.state import norm_layers

__all__ = ["MAML"]

Params = dict[str, Tensor]
# head_init -> the draw of the head's weights (its bias set to zero), None: nn.Linear's own initialization
_HEAD_INITS: dict[str, Callable[[Tensor], Tensor] | None] = {
    "normal": nn.init.normal_, "xavier": nn.init.xavier_uniform_, "default": None,
}  # fmt: skip
_NORM_STATE_UPDATES = ("meta_batch", "task")


@dataclass(frozen=True)
class _Adaptation:
    """How one task is adapted and scored: norm policy, inner steps and learning rate, order, query scoring.

    ``rowwise_query`` scores query rows independently of each other (meta-test, non-transductive policies).
    """

    norm_policy: Policy
    steps: int
    lr: float
    second_order: bool
    rowwise_query: bool


def _positive_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"maml {name} must be an int >= {minimum}, got {value!r}")
    return value


def _positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"maml {name} must be a number > 0, got {value!r}")
    return float(value)


def _query_runner(
    rowwise_query: bool, norm_policy: Policy, model: nn.Module
) -> Callable[[Callable[[Tensor], Tensor], Tensor], Tensor]:
    """How to apply a forward of ``model`` to the query: batch-invariantly (see ``rowwise``, which also checks the
    layers of ``model`` for batch statistics) unless statistics are per batch."""
    if rowwise_query and norm_policy is not Policy.TRANSDUCTIVE:
        return lambda fn, x: rowwise(fn, x, model=model)
    return lambda fn, x: fn(x)


@LEARNERS.register("maml")
class MAML(Learner):
    """MAML (Finn et al., ICML 2017, arXiv 1703.03400), first-order MAML and ANIL (Raghu et al., arXiv 1909.09157).

    The model is ``head(backbone(x))`` with ``head = Linear(backbone.out_features(image_size), n_way)``. For each
    task of the meta-batch (a Python loop), the adapted parameters take ``inner_steps`` SGD steps of rate
    ``inner_lr`` on the support cross-entropy; the task's loss is the query cross-entropy at the adapted
    parameters, and ``meta_loss`` returns the mean over the meta-batch.

    Normalization policies in ``meta_loss``: ``"transductive"`` (every forward normalizes with its own
    batch statistics, the reference MAML behaviour), ``"running"`` (train mode: batch statistics as well) and
    ``"support"`` (the support set's statistics applied to the query: each query forward is preceded by a
    support forward at the same adapted parameters, whose statistics it collects). ``predict`` adapts with
    ``eval_inner_steps`` / ``eval_inner_lr`` in eval mode, with norm state frozen: ``"transductive"`` → batch
    statistics (the query scored as one batch), ``"support"`` → support statistics, ``"running"`` → running
    statistics for every forward. See the module docstring for how norm state is updated.

    Args:
        backbone: feature extractor with ``out_features(image_size)``.
        n_way: classes per task (the head's outputs).
        image_size: image side, to size the head.
        in_channels: image channels (checked against ``backbone.in_channels`` when the backbone has it).
        inner_lr: inner-loop SGD step size during meta-training (0.4 for Omniglot 5-way).
        inner_steps: inner steps during meta-training (>= 1).
        eval_inner_lr: step size at meta-test (``None``: ``inner_lr``).
        eval_inner_steps: steps at meta-test (``None``: 10, as in the reference code; 0 scores the initialization).
        first_order: first-order MAML (inner gradients detached).
        anil: adapt only the head; the backbone features are computed once per task.
        adapt_norm: adapt the norm layers' affine parameters in the inner loop too (learn2learn, torchmeta, higher);
            ``False`` meta-learns them in the outer loop only, as the reference TensorFlow code does.
        head_init: ``"normal"``: weights N(0, 1) and zero bias, as the reference code for Omniglot (a 64-d
            feature); ``"xavier"``: Glorot-uniform weights and zero bias, as the reference code for miniImageNet
            (an 800-d feature, where N(0, 1) weights give logits of standard deviation ~30 and a meta-training
            that stays at chance); ``"default"``: PyTorch's ``nn.Linear`` initialization.
        channels_last: convert input images to the channels-last memory format.
        norm_state_update: when ``meta_loss`` updates the norm layers' state (see the module docstring):
            ``"meta_batch"`` (once per call, on all support sets concatenated) or ``"task"`` (once per task).
        vmap_tasks: run the meta-batch's tasks as one ``torch.func.vmap`` over tasks instead of a Python loop
            (the tasks must have equal shapes; batch statistics are per task, as in the loop). Same losses and
            gradients as the loop to rounding (tested in float64 for BN and SWBN, second order).

    Example:
        >>> import fewshot.backbones
        >>> from episodes.episode import Episode
        >>> def random_episode(n_shot, n_query):  # 5 classes of random 28x28 images
        ...     ids = lambda k: tuple(f"img{i}" for i in range(5 * k))
        ...     label = lambda k: torch.arange(5).repeat_interleave(k)
        ...     x = lambda k: torch.rand(5 * k, 1, 28, 28)
        ...     support, query = (x(n_shot), label(n_shot)), (x(n_query), label(n_query))
        ...     return Episode(*support, *query, tuple("abcde"), ids(n_shot), ids(n_query), 0)
        >>> episodes = [random_episode(n_shot=1, n_query=2), random_episode(n_shot=1, n_query=2)]
        >>> learner = MAML(fewshot.backbones.create("conv4_maml"), n_way=5, image_size=28)
        >>> loss, metrics = learner.meta_loss(episodes, policy="transductive")
        >>> loss.backward()
        >>> sorted(metrics)
        ['acc', 'loss']
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        n_way: int,
        image_size: int,
        in_channels: int | None = None,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_lr: float | None = None,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        anil: bool = False,
        adapt_norm: bool = True,
        head_init: str = "normal",
        channels_last: bool = False,
        norm_state_update: str = "meta_batch",
        vmap_tasks: bool = False,
    ) -> None:
        super().__init__(backbone, channels_last=channels_last)
        self.n_way = _positive_int("n_way", n_way, 2)
        self.inner_lr = _positive_float("inner_lr", inner_lr)
        self.inner_steps = _positive_int("inner_steps", inner_steps, 1)
        self.eval_inner_lr = self.inner_lr if eval_inner_lr is None else _positive_float("eval_inner_lr", eval_inner_lr)
        self.eval_inner_steps = (
            10 if eval_inner_steps is None else _positive_int("eval_inner_steps", eval_inner_steps, 0)
        )
        self.first_order = bool(first_order)
        self.anil = bool(anil)
        self.adapt_norm = bool(adapt_norm)
        if norm_state_update not in _NORM_STATE_UPDATES:
            raise ValueError(
                f"maml norm_state_update must be one of {', '.join(map(repr, _NORM_STATE_UPDATES))}, got "
                f"{norm_state_update!r}; 'meta_batch' updates norm state once per meta-step, 'task' once per task"
            )
        self.norm_state_update = norm_state_update
        self.vmap_tasks = bool(vmap_tasks)
        if head_init not in _HEAD_INITS:
            raise ValueError(f"maml head_init must be one of {', '.join(map(repr, _HEAD_INITS))}, got {head_init!r}")
        backbone_channels = getattr(backbone, "in_channels", None)
        if in_channels is not None and backbone_channels is not None and in_channels != backbone_channels:
            raise ValueError(
                f"maml in_channels={in_channels} but the backbone takes {backbone_channels}-channel images; build "
                "both with the dataset's channel count"
            )
        if not callable(getattr(backbone, "out_features", None)):
            raise TypeError(f"maml needs a backbone with out_features(image_size), got {type(backbone).__name__}")
        self.head = nn.Linear(backbone.out_features(image_size), self.n_way)
        draw = _HEAD_INITS[head_init]
        if draw is not None:
            with torch.no_grad():
                draw(self.head.weight)
                nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, n_way)`` for images ``x`` (N, C, H, W) at the module's own parameters."""
        return self.head(self.backbone(x))

    # ----------------------------------------------------------------- parameters
    def adapted_parameter_names(self) -> list[str]:
        """Names of the parameters the inner loop adapts (all trainable ones, minus norm / backbone per options)."""
        names = [name for name, p in self.named_parameters() if p.requires_grad]
        if self.anil:
            return [name for name in names if name.startswith("head.")]
        if not self.adapt_norm:
            layers = set(norm_layers(self))
            norm_params = {
                f"{prefix}.{name}"
                for prefix, module in self.named_modules()
                if module in layers
                for name, _ in module.named_parameters(recurse=False)
            }
            names = [name for name in names if name not in norm_params]
        return names

    def _split_parameters(self) -> tuple[Params, Params]:
        params = dict(self.named_parameters())
        adapted = set(self.adapted_parameter_names())
        return (
            {k: v for k, v in params.items() if k in adapted},
            {k: v for k, v in params.items() if k not in adapted},
        )

    # ----------------------------------------------------------------- one task
    def _score_query(
        self, forward: Callable[[Tensor], Tensor], xs: Tensor, xq: Tensor, norm_policy: Policy, rowwise_query: bool
    ) -> Tensor:
        """Query outputs of ``forward``; under the support policy, with the statistics of ``forward(xs)``."""
        run = _query_runner(rowwise_query, norm_policy, self)
        if norm_policy is not Policy.SUPPORT:
            return run(forward, xq)
        with norms.collect(self) as support_stats:
            forward(xs)
        with norms.using(self, support_stats):
            return run(forward, xq)

    def _inner_loop(
        self, loss_fn: Callable[[Params], Tensor], adapt: Params, steps: int, lr: float, second_order: bool
    ) -> Params:
        """``steps`` SGD steps ``θ ← θ − lr·∇loss_fn(θ)`` on the dict ``adapt``; returns the adapted dict.

        Second order: ``torch.func.grad`` at the live parameters, so the outer backward differentiates through the
        inner gradient. First order: the gradient is taken at detached parameters and detached itself.
        """
        grad_fn = torch.func.grad(loss_fn)
        for _ in range(steps):
            if second_order:
                grads = grad_fn(adapt)
            else:  # first order: the inner gradient is a constant for the outer backward
                grads = {k: g.detach() for k, g in grad_fn({k: v.detach() for k, v in adapt.items()}).items()}
            adapt = {k: adapt[k] - lr * grads[k] for k in adapt}
        return adapt

    def _task_logits(
        self, xs: Tensor, ys: Tensor, xq: Tensor, adapt: Params, fixed: Params, buffers: Params, how: _Adaptation
    ) -> Tensor:
        """Adapt on the (prepared) support images ``xs``; query logits ``(n_query_total, n_way)``."""
        if self.anil:
            return self._anil_logits(xs, ys, xq, adapt, fixed, buffers, how)

        def net(params: Params, x: Tensor) -> Tensor:
            return functional_call(self, (params, fixed, buffers), (x,), strict=True)

        def support_loss(params: Params) -> Tensor:
            if how.norm_policy is not Policy.SUPPORT:
                return F.cross_entropy(net(params, xs), ys)
            with norms.collect(self):  # the support forward normalizes with its own statistics
                return F.cross_entropy(net(params, xs), ys)

        adapted = self._inner_loop(support_loss, adapt, how.steps, how.lr, how.second_order)
        return self._score_query(lambda x: net(adapted, x), xs, xq, how.norm_policy, how.rowwise_query)

    def _anil_logits(
        self, xs: Tensor, ys: Tensor, xq: Tensor, adapt: Params, fixed: Params, buffers: Params, how: _Adaptation
    ) -> Tensor:
        """ANIL: backbone features once per task at the meta-parameters, inner loop on the head only."""
        strip = len("backbone.")
        backbone_state = (
            {k[strip:]: v for k, v in fixed.items() if k.startswith("backbone.")},
            {k[strip:]: v for k, v in buffers.items() if k.startswith("backbone.")},
        )
        head_fixed = {k: v for k, v in fixed.items() if k.startswith("head.")}
        run = _query_runner(how.rowwise_query, how.norm_policy, self)

        def features(x: Tensor) -> Tensor:
            return functional_call(self.backbone, backbone_state, (x,), strict=True)

        def head_logits(params: Params, f: Tensor) -> Tensor:
            p = {**head_fixed, **params}
            return F.linear(f, p["head.weight"], p["head.bias"])

        with norms.collect(self) as stats:
            support_f = features(xs)
        with norms.using(self, stats):  # under the support policy, the statistics collected just above
            query_f = run(features, xq)
        adapted = self._inner_loop(
            lambda p: F.cross_entropy(head_logits(p, support_f), ys), adapt, how.steps, how.lr, how.second_order
        )
        return run(lambda f: head_logits(adapted, f), query_f)

    # ----------------------------------------------------------------- the learner API
    def meta_loss(self, episodes: Sequence[Episode], *, policy: str = "running") -> tuple[Tensor, dict[str, Tensor]]:
        """Mean query cross-entropy after adaptation over the meta-batch ``episodes``, and ``{"loss", "acc"}``.

        Args:
            episodes: the meta-batch; each episode must be ``n_way``-way.
            policy: norm statistics policy during meta-training: ``"transductive"``, ``"running"`` or ``"support"``.

        Returns:
            ``(loss, metrics)``: the differentiable scalar loss (second order unless ``first_order``), and
            ``{"loss", "acc"}``: its value and the post-adaptation query accuracy as detached 0-dim tensors.
        """
        policy = check_train_policy(policy)
        episodes = self._episodes(episodes)
        for ep in episodes:
            check_episode(ep, self.n_way)
        how = _Adaptation(
            policy, self.inner_steps, self.inner_lr, second_order=not self.first_order, rowwise_query=False
        )
        with self.mode(training=True, norm_policy=policy, frozen=True):
            adapt, fixed = self._split_parameters()
            buffers = dict(self.named_buffers())
            if self.vmap_tasks:
                logits = self._vmapped_logits(episodes, adapt, fixed, buffers, how)
            else:
                logits = [
                    self._task_logits(
                        self.prepare(ep.support_x), ep.support_y, self.prepare(ep.query_x), adapt, fixed, buffers, how
                    )
                    for ep in episodes
                ]
            self._update_norm_state(episodes)
        loss = torch.stack([F.cross_entropy(lg, ep.query_y) for lg, ep in zip(logits, episodes, strict=True)]).mean()
        return loss, {"loss": loss.detach(), "acc": accuracy(logits, [ep.query_y for ep in episodes])}

    def _vmapped_logits(
        self, episodes: Sequence[Episode], adapt: Params, fixed: Params, buffers: Params, how: _Adaptation
    ) -> list[Tensor]:
        """Every task's query logits from one ``torch.func.vmap`` over the stacked tasks (equal shapes needed)."""
        shapes = {(tuple(ep.support_x.shape), tuple(ep.query_x.shape)) for ep in episodes}
        if len(shapes) != 1:
            raise ValueError(
                f"maml vmap_tasks=True needs the meta-batch's tasks in equal shapes, got (support, query) shapes "
                f"{sorted(shapes)}; sample the meta-batch with one n_way, n_shot and n_query, or set vmap_tasks=False"
            )

        def task(xs: Tensor, ys: Tensor, xq: Tensor) -> Tensor:
            return self._task_logits(xs, ys, xq, adapt, fixed, buffers, how)

        stacked = torch.func.vmap(task)(
            torch.stack([self.prepare(ep.support_x) for ep in episodes]),
            torch.stack([ep.support_y for ep in episodes]),
            torch.stack([self.prepare(ep.query_x) for ep in episodes]),
        )
        return list(stacked.unbind(0))

    def _update_norm_state(self, episodes: Sequence[Episode]) -> None:
        """The meta-step's one state change: the next state from the supports (module docstring), committed."""
        if not any(layer.track_running_stats for layer in norm_layers(self)):
            return
        supports = [self.prepare(ep.support_x) for ep in episodes]
        if self.norm_state_update == "meta_batch":
            supports = [torch.cat(supports)]
        state = dict(self.backbone.named_buffers())
        with joined_batch_stats(self.backbone):  # several ranks: each layer's statistics over every rank's supports
            for xs in supports:
                state = norms.advance(self.backbone, xs, state)
        norms.commit(self.backbone, state)

    def predict(self, episode: Episode, *, policy: str = "running") -> Tensor:
        """Adapt on the support set and return query logits ``(n_way * n_query, n_way)``; changes no model state.

        Args:
            episode: an ``n_way``-way task.
            policy: ``"transductive"``, ``"support"`` or ``"running"`` (see the class docstring).
        """
        norm_policy = predict_norm_policy(policy)
        check_episode(episode, self.n_way)
        with torch.no_grad(), self.mode(training=False, norm_policy=norm_policy, frozen=True):
            adapt, fixed = self._split_parameters()
            return self._task_logits(
                self.prepare(episode.support_x), episode.support_y, self.prepare(episode.query_x), adapt, fixed,
                dict(self.named_buffers()),
                _Adaptation(norm_policy, self.eval_inner_steps, self.eval_inner_lr, second_order=False,
                            rowwise_query=True),
            )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"n_way={self.n_way}, inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, "
            f"eval_inner_lr={self.eval_inner_lr}, eval_inner_steps={self.eval_inner_steps}, "
            f"first_order={self.first_order}, anil={self.anil}, adapt_norm={self.adapt_norm}, "
            f"channels_last={self.channels_last}, norm_state_update={self.norm_state_update!r}, "
            f"vmap_tasks={self.vmap_tasks}"
        )
