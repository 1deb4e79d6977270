"""`EpisodeSampler`: N-way K-shot episodes drawn from a `ClassSplit`, episode ``i`` a pure function of ``(seed, i)``.

Every episode gets its own random generator, ``numpy.random.Generator(numpy.random.Philox(key=[seed, i]))``
(Philox 4x64, a counter-based generator: distinct keys give independent streams; Salmon, Moraes, Dror and
Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011). Nothing else is random, so episode ``i`` is the
same on every run, with any number of DataLoader workers and in any order of access, and can be regenerated
on its own. Constructing the generator costs about 12 µs, the same as ``PCG64(SeedSequence([seed, i]))``
(``benchmarks/bench_episodes.py``); Philox is kept because its key *is* ``(seed, i)``, with no hashing step.

The draws of one episode, in this order, all from ``Generator.random`` (uniform doubles, the generator method
least likely to change between numpy versions):

1. ``within_alphabet`` only: the group (Omniglot alphabet), uniform over the groups that hold at least
   ``n_way`` classes (the Lake et al. within-alphabet protocol gives every qualifying alphabet the same weight,
   whatever its size). Groups with fewer classes are never drawn.
2. The classes: ``n_way`` uniform doubles drive a partial Fisher-Yates shuffle of the pool (the split, or the
   group): a uniform draw without replacement in ``O(n_way)``. The classes are then put in **sorted
   class-name order**: label ``j`` is the ``j``-th name.
3. The images: for each chosen class, one key per image of the class; the ``n_shot + n_query`` smallest keys
   in key order give the support (first ``n_shot``) and then the query images, all distinct.
4. Rotation augmentation only: one quarter turn ``k`` in {0, 1, 2, 3} **per class** (not one for the whole
   task, the defect of learn2learn's ``RandomClassRotation``). Drawn after the images, so switching
   augmentation on or off leaves the classes and images of every episode unchanged.
5. Image augmentation only (``augment``, config key ``data.augment``; :mod:`episodes.augment`): one flip bit
   per image, then one ``(row, col)`` crop offset per image, for the images in the order the builders stack
   them (support rows, then query rows, class-major). Drawn last, so switching it on or off leaves classes,
   images and rotations unchanged.

Every image of class ``c`` is shown as ``numpy.rot90(stored, (split.class_rotation[c] + k) % 4, axes=(0, 1))``:
quarter turns counter-clockwise, like ``PIL.Image.rotate(90 * k)``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch

from episodes.augment import AugmentDraw, ImageAugment
from episodes.episode import Episode
from episodes.pixels import images_to_float
from episodes.split import ClassSplit
from fewshot.errors import ConfigError, DataError

__all__ = ["DEFAULT_LENGTH", "EpisodeBuilder", "EpisodeIndices", "EpisodeSampler", "split_label"]

#: ``len(sampler)`` when no ``length`` is given: effectively endless. Pass ``length=`` before handing the
#: sampler to a ``RandomSampler`` (which materializes a permutation of ``range(len)``).
DEFAULT_LENGTH = 1_000_000_000
_MAX_TABLE = 1 << 22  # entries of the padded class -> image table (32 MiB); larger splits gather class by class


def split_label(split: ClassSplit) -> str:
    """``"split 'test' (omniglot/vinyals)"``: how messages name a split."""
    return f"split {split.split!r} ({split.dataset}/{split.protocol})"


@dataclass(frozen=True, eq=False)
class EpisodeIndices:
    """Which images make up one episode, without the tensors.

    Attributes:
        index: the episode index.
        classes: int64 ``(n_way,)``, class indices into ``split.class_names``, in sorted class-name order.
        support: int64 ``(n_way, n_shot)``, indices into ``split.images``; row ``j`` belongs to ``classes[j]``.
        query: int64 ``(n_way, n_query)``, likewise; disjoint from ``support`` row by row.
        rotation: int64 ``(n_way,)``, total quarter turns (class rotation + augmentation, mod 4) applied to
            every image of the class.
        augment: the flip and crop of each image (:class:`episodes.augment.AugmentDraw`), applied after the
            rotation; ``None`` (always for fixed evaluation episodes): the images as stored.
    """

    index: int
    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray
    rotation: np.ndarray
    augment: AugmentDraw | None = None


class EpisodeBuilder:
    """Turns :class:`EpisodeIndices` into an :class:`~episodes.episode.Episode` (the tensor-building hot path).

    One fancy-index gather from the uint8 store, ``rot90`` only for classes with a non-zero rotation, the
    flip and crop of ``ind.augment`` when there is one (one more gather), and one conversion to float32
    (:func:`episodes.pixels.images_to_float`: ``/ 255``, standardized per channel when the split has a
    ``pixel_norm``).

    Args:
        split: the split the indices refer to; ``split.images`` must be uint8 ``(n, H, W)`` or ``(n, H, W, C)``.
    """

    def __init__(self, split: ClassSplit) -> None:
        images = split.images
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim not in (3, 4):
            got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise DataError(
                f"{split_label(split)}: expected images as a uint8 array (n, H, W) or (n, H, W, C), got {got}; "
                "the dataset loader must return decoded uint8 images"
            )
        self.split = split
        self._images = images
        self._ids = np.asarray(split.image_ids, dtype=object)
        self._names = tuple(split.class_names)

    def __call__(self, ind: EpisodeIndices) -> Episode:
        """Build the episode.

        Args:
            ind: the episode's indices (see :class:`EpisodeIndices`).

        Returns:
            The :class:`~episodes.episode.Episode`: ``support_x`` ``(n_way * n_shot, C, H, W)`` and ``query_x``
            ``(n_way * n_query, C, H, W)`` float32 in [0, 1] (standardized when ``split.pixel_norm`` is set),
            class-major.
        """
        n_way, n_shot = ind.support.shape
        n_query = ind.query.shape[1]
        flat_support = ind.support.reshape(-1)
        flat_query = ind.query.reshape(-1)
        arr = self._images[np.concatenate((flat_support, flat_query))]  # (M, H, W[, C]) uint8, a fresh copy
        n_s = n_way * n_shot
        for c in np.flatnonzero(ind.rotation).tolist():  # rotate the class's rows in place, support and query
            k = int(ind.rotation[c])
            _rot90_(arr[c * n_shot : (c + 1) * n_shot], k)
            _rot90_(arr[n_s + c * n_query : n_s + (c + 1) * n_query], k)
        if ind.augment is not None:
            arr = ind.augment.apply(torch.from_numpy(arr)).numpy()
        x = images_to_float(arr, self.split.pixel_norm)
        labels = np.arange(n_way, dtype=np.int64)
        return Episode(
            support_x=x[:n_s],
            support_y=torch.from_numpy(np.repeat(labels, n_shot)),
            query_x=x[n_s:],
            query_y=torch.from_numpy(np.repeat(labels, n_query)),
            class_ids=tuple(self._names[c] for c in ind.classes.tolist()),
            support_ids=tuple(self._ids[flat_support].tolist()),
            query_ids=tuple(self._ids[flat_query].tolist()),
            index=ind.index,
        )


def _rot90_(block: np.ndarray, k: int) -> None:
    """``block[...] = numpy.rot90(block, k, axes=(1, 2))`` for square images ``(n, S, S[, C])``, by slicing."""
    if k == 1:
        turned = block[:, :, ::-1].swapaxes(1, 2)
    elif k == 2:
        turned = block[:, ::-1, ::-1]
    else:
        turned = block.swapaxes(1, 2)[:, :, ::-1]
    block[...] = turned.copy()  # the copy: source and destination share memory


def _distinct(u: np.ndarray, n: int) -> np.ndarray:
    """``len(u)`` distinct integers of ``range(n)``, uniform without replacement, from uniform doubles ``u``.

    A partial Fisher-Yates shuffle of the virtual array ``0..n-1`` (swaps kept in a dict): step ``j`` picks
    position ``j + floor(u[j] * (n - j))``. Costs ``O(len(u))``, not ``O(n)``.
    """
    swaps: dict[int, int] = {}
    out = []
    for j, uj in enumerate(u.tolist()):
        r = j + min(int(uj * (n - j)), n - j - 1)
        out.append(swaps.get(r, r))
        swaps[r] = swaps.get(j, j)
    return np.array(out, dtype=np.int64)


def _smallest_in_order(keys: np.ndarray, k: int) -> np.ndarray:
    """Column positions of the ``k`` smallest keys of each row, in increasing key order: ``(rows, k)`` int64.

    Equal to ``argsort(keys, axis=1)[:, :k]`` (up to ties, which uniform doubles make vanishingly rare);
    wide rows take a partition first to avoid sorting all of them.
    """
    width = keys.shape[1]
    if width <= 256 or k == width:
        return np.argsort(keys, axis=1)[:, :k]
    part = np.argpartition(keys, k - 1, axis=1)[:, :k]
    return np.take_along_axis(part, np.argsort(np.take_along_axis(keys, part, axis=1), axis=1), axis=1)


def _check_size(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value}; use {name} >= 1")
    return int(value)


class EpisodeSampler:
    """Map-style dataset of N-way K-shot episodes: ``sampler[i]`` is episode ``i``, a pure function of (seed, i).

    Works as a ``torch.utils.data.Dataset``: use ``DataLoader(sampler, batch_size=None, num_workers=...)`` for
    single episodes or ``batch_size=B, collate_fn=collate_episodes`` for meta-batches. Sizes are checked here,
    once, against every class that can be drawn.

    Args:
        split: the class split to draw from.
        n_way: classes per episode.
        n_shot: support images per class.
        n_query: query images per class (independent of ``n_shot``).
        seed: non-negative int below 2**64; different seeds give different episodes.
        within_alphabet: draw all classes of an episode from one group (``split.class_groups``), the group
            uniform over those with at least ``n_way`` classes.
        rotation_augment: give each class of an episode its own random quarter turn on top of its class
            rotation. ``None`` follows the split (``split.meta.get("rotation") == "augment"``).
        length: ``len(sampler)``; default :data:`DEFAULT_LENGTH` (effectively endless).
        augment: random flip / padded crop of every image (:class:`episodes.augment.ImageAugment`, config key
            ``data.augment``; training samplers only); ``None`` or an inactive one: none.

    Raises:
        ConfigError: a size is not positive, ``n_way`` exceeds the classes available, ``n_shot + n_query``
            exceeds the images of some class, or no group qualifies for ``within_alphabet``.
        TypeError: a size, the seed or the length is not an int.
        DataError: the split's images are not uint8, or rotations are asked of non-square images.

    Example:
        >>> sampler = EpisodeSampler(split, n_way=5, n_shot=1, n_query=15, seed=0)  # doctest: +SKIP
        >>> ep = sampler[7]  # the same episode on every run  # doctest: +SKIP
    """

    def __init__(
        self,
        split: ClassSplit,
        n_way: int,
        n_shot: int,
        n_query: int,
        *,
        seed: int = 0,
        within_alphabet: bool = False,
        rotation_augment: bool | None = None,
        length: int | None = None,
        augment: ImageAugment | None = None,
    ) -> None:
        if not isinstance(split, ClassSplit):
            raise TypeError(f"split must be a ClassSplit, got {type(split).__name__}")
        self.split = split
        self.n_way = _check_size("n_way", n_way)
        self.n_shot = _check_size("n_shot", n_shot)
        self.n_query = _check_size("n_query", n_query)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
        if not 0 <= seed < 2**64:
            raise ConfigError(f"seed must be in [0, 2**64), got {seed}; use a non-negative seed")
        self.seed = int(seed)
        self.length = DEFAULT_LENGTH if length is None else _check_size("length", length)
        self.within_alphabet = bool(within_alphabet)
        if rotation_augment is None:
            rotation_augment = split.meta.get("rotation") == "augment"
        self.rotation_augment = bool(rotation_augment)
        if augment is not None and not isinstance(augment, ImageAugment):
            raise TypeError(f"augment must be an ImageAugment or None, got {type(augment).__name__}")
        self.augment = augment if augment is not None and augment.active else None
        if self.augment is not None:
            self.augment.check_image_size(*split.images.shape[1:3], split_label(split))
        self._builder = EpisodeBuilder(split)

        names = list(split.class_names)
        self._sizes = np.array([len(ix) for ix in split.class_images], dtype=np.int64)
        self._class_images = [np.asarray(ix, dtype=np.int64) for ix in split.class_images]
        self._class_rotation = np.asarray(split.class_rotation, dtype=np.int64) % 4
        # padded (n_classes, max_size) table of image indices for a one-shot gather, when it is small
        self._table = None
        if len(names) * int(self._sizes.max(initial=0)) <= _MAX_TABLE:
            self._table = np.full((len(names), int(self._sizes.max(initial=0))), -1, dtype=np.int64)
            for c, ix in enumerate(self._class_images):
                self._table[c, : len(ix)] = ix
        # rank[c] = position of class c in sorted class-name order
        self._rank = np.empty(len(names), dtype=np.int64)
        self._rank[np.argsort(np.asarray(names, dtype=object), kind="stable")] = np.arange(len(names))
        self._groups = self._eligible_groups() if self.within_alphabet else [np.arange(len(names))]
        self._check_sizes()
        self._check_rotations()

    # ----------------------------------------------------------------------------------------- validation
    def _eligible_groups(self) -> list[np.ndarray]:
        split, n_way = self.split, self.n_way
        members: dict[str, list[int]] = {}
        for c, g in enumerate(split.class_groups):
            if g:
                members.setdefault(g, []).append(c)
        if not members:
            raise ConfigError(
                f"within_alphabet=True needs class groups, but {split_label(split)} has none; "
                "drop --within-alphabet or use a dataset with groups (omniglot)"
            )
        eligible = [np.array(members[g], dtype=np.int64) for g in sorted(members) if len(members[g]) >= n_way]
        if not eligible:
            largest = max(sorted(members), key=lambda g: len(members[g]))
            raise ConfigError(
                f"within_alphabet=True needs a group with at least n_way = {n_way} classes, but the largest "
                f"group of {split_label(split)} is {largest!r} with {len(members[largest])} classes; "
                "lower n_way or drop within_alphabet"
            )
        return eligible

    def _check_sizes(self) -> None:
        split = self.split
        pool = np.concatenate(self._groups)
        if self.n_way > len(pool):
            raise ConfigError(
                f"n_way = {self.n_way} exceeds the {len(pool)} classes of {split_label(split)}; lower n_way"
            )
        need = self.n_shot + self.n_query
        sizes = self._sizes[pool]
        short = pool[sizes < need]
        if len(short):
            c = int(short[np.argmin(self._sizes[short])])
            more = f" (and {len(short) - 1} other classes)" if len(short) > 1 else ""
            raise ConfigError(
                f"n_shot + n_query = {need} exceeds the {self._sizes[c]} images of class "
                f"{split.class_names[c]!r}{more} in {split_label(split)}; lower n_shot or n_query"
            )

    def _check_rotations(self) -> None:
        h, w = self.split.images.shape[1:3]
        if h == w:
            return
        if self.rotation_augment or np.any(self._class_rotation % 2 == 1):
            raise DataError(
                f"{split_label(self.split)} has non-square {h}x{w} images, which a quarter turn would reshape; "
                "resize the images to a square size or turn rotations off"
            )

    # ------------------------------------------------------------------------------------------- sampling
    def _normalize_index(self, i: object) -> int:
        try:
            i = operator.index(i)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(f"episode index must be an int, got {type(i).__name__} {i!r}") from None
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"episode index {i} out of range for a sampler of length {self.length}")
        return i

    def indices(self, i: int) -> EpisodeIndices:
        """The classes, images and rotations of episode ``i``, without building tensors.

        Args:
            i: episode index in ``[-len, len)``.
        """
        i = self._normalize_index(i)
        rng = np.random.Generator(np.random.Philox(key=np.array([self.seed, i], dtype=np.uint64)))
        groups = self._groups
        pool = groups[min(int(rng.random() * len(groups)), len(groups) - 1)] if self.within_alphabet else groups[0]
        n_way, kq = self.n_way, self.n_shot + self.n_query

        chosen = pool[_distinct(rng.random(n_way), len(pool))]
        classes = chosen[np.argsort(self._rank[chosen])]

        sizes = self._sizes[classes]
        width = int(sizes.max())
        keys = rng.random((n_way, width))
        if sizes.min() < width:
            keys[np.arange(width)[None, :] >= sizes[:, None]] = 2.0  # padding never wins: kq <= every size
        pos = _smallest_in_order(keys, kq)
        if self._table is not None:
            chosen_images = self._table[classes[:, None], pos]
        else:
            chosen_images = np.stack([self._class_images[c][p] for c, p in zip(classes.tolist(), pos, strict=True)])

        rotation = self._class_rotation[classes]
        if self.rotation_augment:
            rotation = (rotation + np.minimum(rng.random(n_way) * 4, 3).astype(np.int64)) % 4
        draw = None if self.augment is None else self.augment.draw(rng, n_way * kq)
        return EpisodeIndices(
            index=i,
            classes=classes,
            support=np.ascontiguousarray(chosen_images[:, : self.n_shot]),
            query=np.ascontiguousarray(chosen_images[:, self.n_shot :]),
            rotation=rotation,
            augment=draw,
        )

    def __getitem__(self, i: int) -> Episode:
        """Episode ``i`` (see :class:`~episodes.episode.Episode` for the tensor shapes)."""
        return self._builder(self.indices(i))

    def to(self, device: torch.device | str) -> EpisodeSampler:
        """Build episodes on ``device`` from now on (returns ``self``).

        On a CUDA device the split's uint8 images are copied there once and each episode is gathered there
        (:class:`episodes.device_builder.DeviceEpisodeBuilder`); on the CPU the numpy builder is kept. The
        episodes' images and labels are the same on every device.
        """
        device = torch.device(device)
        if device.type == "cpu":
            self._builder = EpisodeBuilder(self.split)
        else:
            from episodes.device_builder import DeviceEpisodeBuilder

            self._builder = DeviceEpisodeBuilder(self.split, device)
        return self

    def build(self, ind: EpisodeIndices) -> Episode:
        """Build the tensors of an episode from its indices (e.g. indices bound from a fixed-episode file)."""
        return self._builder(ind)

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler({split_label(self.split)}, n_way={self.n_way}, n_shot={self.n_shot}, "
            f"n_query={self.n_query}, seed={self.seed}, within_alphabet={self.within_alphabet}, "
            f"rotation_augment={self.rotation_augment}, length={self.length}"
            + ("" if self.augment is None else f", augment={self.augment.to_config()}")
            + ")"
        )
