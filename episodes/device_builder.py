"""`DeviceEpisodeBuilder`: episodes gathered on a GPU from the dataset held there as uint8.

On a CUDA device the host-side :class:`~episodes.sampler.EpisodeBuilder` (numpy gather, float conversion, copy)
costs as much as a small ProtoNet step. This builder keeps the split's images on the device once, as uint8
(Omniglot ~30 MB, miniImageNet 84x84 ~1.3 GB), copies only the episode's image indices per episode, gathers
with one ``index_select``, turns each rotated class with ``torch.rot90`` (the same quarter turns as
``numpy.rot90`` on ``axes=(1, 2)``), applies the episode's flip and crop when it has one
(:meth:`episodes.augment.AugmentDraw.apply`, the same code as on the CPU) and converts to float32 in one pass
(:func:`episodes.pixels.to_float`). The indices come from the same
:meth:`~episodes.sampler.EpisodeSampler.indices`, so episode ``i`` holds the same images on every device; the
pixels equal the CPU's exactly without ``data.normalize`` and to float32 rounding with it (a fused
multiply-add may round once instead of twice).
"""

from __future__ import annotations

import numpy as np
import torch

from episodes.episode import Episode
from episodes.pixels import to_float

__all__ = ["DeviceEpisodeBuilder"]


class DeviceEpisodeBuilder:
    """Builds :class:`~episodes.episode.Episode` tensors on ``device`` from :class:`EpisodeIndices`.

    Args:
        split: the split the indices refer to; ``split.images`` uint8 ``(n, H, W)`` or ``(n, H, W, C)``.
        device: where the images are held and the episodes built.
    """

    def __init__(self, split, device: torch.device) -> None:  # noqa: ANN001 - a ClassSplit
        self.split = split
        self.device = torch.device(device)
        self._images = torch.from_numpy(np.ascontiguousarray(split.images)).to(self.device)
        self._ids = np.asarray(split.image_ids, dtype=object)
        self._names = tuple(split.class_names)

    def __call__(self, ind) -> Episode:  # noqa: ANN001 - an EpisodeIndices
        """The episode of ``ind``; ``support_x`` ``(n_way * n_shot, C, H, W)``, ``query_x`` likewise, float32."""
        n_way, n_shot = ind.support.shape
        n_query = ind.query.shape[1]
        flat_support, flat_query = ind.support.reshape(-1), ind.query.reshape(-1)
        rows = torch.from_numpy(np.concatenate((flat_support, flat_query))).to(self.device, non_blocking=True)
        arr = self._images.index_select(0, rows)  # (M, H, W[, C]) uint8, on the device
        n_s = n_way * n_shot
        for c in np.flatnonzero(ind.rotation).tolist():
            k = int(ind.rotation[c])
            for lo, hi in ((c * n_shot, (c + 1) * n_shot), (n_s + c * n_query, n_s + (c + 1) * n_query)):
                arr[lo:hi] = torch.rot90(arr[lo:hi], k, dims=(1, 2))
        if ind.augment is not None:  # flip and crop (training episodes only): one more gather, on the device
            arr = ind.augment.apply(arr)
        raw = arr.unsqueeze(1) if arr.dim() == 3 else arr.permute(0, 3, 1, 2)
        x = to_float(raw, self.split.pixel_norm)
        labels = torch.arange(n_way, device=self.device)
        return Episode(
            support_x=x[:n_s],
            support_y=labels.repeat_interleave(n_shot),
            query_x=x[n_s:],
            query_y=labels.repeat_interleave(n_query),
            class_ids=tuple(self._names[c] for c in ind.classes.tolist()),
            support_ids=tuple(self._ids[flat_support].tolist()),
            query_ids=tuple(self._ids[flat_query].tolist()),
            index=ind.index,
        )
