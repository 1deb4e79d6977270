"""The decoded Omniglot store: every character found, preprocessed once, cached as uint8.

Preprocessing (:func:`preprocess`), applied to each 105×105 binary image:

1. grey levels: paper 0 and ink 255 when ``invert=True`` (the default: strokes bright on a dark ground, as
   in Prototypical Networks and MAML, whose pipelines compute ``1 - x``), or paper 255 and ink 0;
2. resize to ``image_size``×``image_size`` (default 28; 105 means no resize) with Pillow's LANCZOS filter on
   the grey image, computed in float32 (Pillow mode 'F') and rounded once to uint8.

Why LANCZOS on the grey image: shrinking 105 → 28 (3.75×) with an anti-aliasing filter keeps thin strokes
as grey levels instead of dropping or thickening them at random, and it is the filter of the MAML reference
(cbfinn/maml ``resize_images.py``), torchvision-based loaders (learn2learn) and MAML++. Beware that Pillow
resizes a mode '1' image (the PNGs as opened) with NEAREST whatever filter is asked; cbfinn/maml and
Prototypical Networks (jakesnell/prototypical-networks, which resized with the then-default filter) both
resized the '1' image and so in fact trained on nearest-neighbour, binary 28×28 images. ``resample="nearest"``
reproduces that.

Why float: Pillow's 8-bit path rounds and clips to 0..255 between its horizontal and vertical passes, so it
is not equivariant to a 90° rotation (measured on Omniglot: resize-then-rot90 differs from rot90-then-resize
by up to 29/255). In float the two agree to rounding (2 pixels in 4.7 million differ by 1/255), so storing one
resized image and rotating it with ``numpy.rot90`` at draw time (the Vinyals rotated classes) gives what
rotating the original first would have given.

The store is cached by :mod:`episodes.cache`, keyed by the source files' fingerprint and the options, so the
decode (seconds) happens once per machine and option set.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from episodes.cache import fingerprint_sources, load_cached, make_key, save_cached
from episodes.datasets.omniglot_sources import IMAGE_SIDE, N_DRAWERS, Character, OmniglotCatalog, iter_raw
from fewshot.errors import ConfigError

__all__ = [
    "RESAMPLE_FILTERS",
    "STORE_VERSION",
    "OmniglotStore",
    "character_digest",
    "check_options",
    "load_store",
    "preprocess",
]

STORE_VERSION = 1
RESAMPLE_FILTERS = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}


def check_options(image_size: int, invert: bool, resample: str) -> dict:
    """Validate the preprocessing options; return them as a plain dict (for keys, fingerprints and meta).

    Raises:
        ConfigError: an option has the wrong type or value (the message names it).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not 1 <= image_size <= 1024:
        raise ConfigError(
            f"image_size must be an int from 1 to 1024 (28 for the Vinyals protocol, {IMAGE_SIDE} for no resize), "
            f"got {image_size!r}"
        )
    if not isinstance(invert, (bool, np.bool_)):
        raise ConfigError(f"invert must be true or false, got {invert!r}")
    if resample not in RESAMPLE_FILTERS:
        raise ConfigError(f"resample must be one of {', '.join(RESAMPLE_FILTERS)}, got {resample!r}")
    return {"image_size": int(image_size), "invert": bool(invert), "resample": str(resample)}


def preprocess(pixels: np.ndarray, image_size: int = 28, invert: bool = True, resample: str = "lanczos") -> np.ndarray:
    """Turn binary Omniglot images into uint8 grey images of the model's size (see the module docstring).

    Args:
        pixels: bool ``(n, 105, 105)``, True = paper.
        image_size: output side; 105 keeps the original size.
        invert: ink bright (255) on dark paper (0) if True.
        resample: ``"lanczos"`` or ``"nearest"``.

    Returns:
        uint8 ``(n, image_size, image_size)``.

    Example:
        >>> x = np.ones((1, 105, 105), dtype=bool); x[0, 40:60, 50:55] = False  # a vertical stroke
        >>> y = preprocess(x, 28)
        >>> y.shape, y.dtype, int(y[0, 0, 0]), int(y.max()) > 200
        ((1, 28, 28), dtype('uint8'), 0, True)
    """
    ink, paper = (255.0, 0.0) if invert else (0.0, 255.0)
    grey = np.where(pixels, np.float32(paper), np.float32(ink))
    if image_size == pixels.shape[-1]:
        return grey.astype(np.uint8)
    out = np.empty((len(grey), image_size, image_size), dtype=np.uint8)
    filt = RESAMPLE_FILTERS[resample]
    for i, img in enumerate(grey):
        small = np.asarray(Image.fromarray(img).resize((image_size, image_size), filt))  # float32: mode 'F'
        out[i] = np.clip(np.rint(small), 0, 255)
    return out


def character_digest(char: Character, pixels: np.ndarray) -> str:
    """sha256 of a character's image ids and bits: equal digests mean bit-identical images, whatever the format.

    Args:
        char: the character.
        pixels: bool ``(20, 105, 105)`` from :func:`~episodes.datasets.omniglot_sources.iter_raw`.
    """
    h = hashlib.sha256("\n".join(char.image_ids()).encode())
    h.update(np.packbits(np.ascontiguousarray(pixels, dtype=bool)).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class OmniglotStore:
    """All characters found, preprocessed.

    Attributes:
        images: uint8 ``(n_characters * 20, S, S)``, character-major in :attr:`characters` order, drawer 01
            first: the images of character ``j`` are rows ``20*j .. 20*j + 19``.
        characters: the characters, sorted by id.
        digests: per character, :func:`character_digest` of its raw bits
            (format-independent; used for split fingerprints).
        options: the preprocessing options (``image_size``, ``invert``, ``resample``).
        from_cache: whether the images came from the decoded cache.
    """

    images: np.ndarray
    characters: list[Character]
    digests: list[str]
    options: dict
    from_cache: bool

    def positions(self) -> dict[str, int]:
        """Character name → its position in :attr:`characters`."""
        return {c.name: j for j, c in enumerate(self.characters)}


def _build(catalog: OmniglotCatalog, options: dict) -> tuple[np.ndarray, list[str]]:
    chars = catalog.characters
    where = {c.char_id: j for j, c in enumerate(chars)}
    side = options["image_size"]
    images = np.empty((len(chars) * N_DRAWERS, side, side), dtype=np.uint8)
    digests = [""] * len(chars)
    for source in catalog.sets:
        for char, pixels in iter_raw(source):
            j = where[char.char_id]
            digests[j] = character_digest(char, pixels)
            images[j * N_DRAWERS : (j + 1) * N_DRAWERS] = preprocess(pixels, **options)
    return images, digests


def load_store(
    catalog: OmniglotCatalog, image_size: int = 28, invert: bool = True, resample: str = "lanczos"
) -> OmniglotStore:
    """Decode and preprocess every character of ``catalog``, or load the result from the cache.

    Raises:
        ConfigError: bad options.
        DataError: a source file is corrupt (only when decoding, i.e. on a cache miss).
    """
    options = check_options(image_size, invert, resample)
    paths = [p for s in catalog.sets for p in s.paths]
    key = make_key("omniglot-store", STORE_VERSION, fingerprint_sources(paths), options)
    chars = catalog.characters
    listing = [[c.name, c.char_id, c.set] for c in chars]
    found = load_cached("omniglot", key)
    if found is not None:
        images, meta = found
        if meta.get("characters") == listing and len(meta.get("digests", ())) == len(chars):
            return OmniglotStore(images, chars, list(meta["digests"]), options, from_cache=True)
        warnings.warn(
            f"decoded Omniglot cache {key} lists other characters than the sources; rebuilding it", stacklevel=2
        )
    images, digests = _build(catalog, options)
    save_cached("omniglot", key, images, {"characters": listing, "digests": digests, "sources": catalog.describe()})
    return OmniglotStore(images, chars, digests, options, from_cache=False)
