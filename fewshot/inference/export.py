"""Export a trained run's backbone as a ``torch.export`` program (``.pt2``) that loads without fewshot.

The program is the backbone in evaluation mode with the run's ``running`` norm statistics baked in (batch size
free, one image's features independent of the others): ``torch.export.load(FILE).module()(x)`` maps float32
``(N, C, H, W)`` images in [0, 1], preprocessed as the run's training data, to ``(N, D)`` features. How to
preprocess (the run's dataset and its options: size, grey/RGB, Omniglot's inversion) is stored in the file as
the extra file ``fewshot.json`` (``torch.export.load(FILE, extra_files={"fewshot.json": ""})``) and returned.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import torch

from episodes.cache import atomic_write_bytes
from fewshot.device import model_device
from fewshot.errors import ConfigError
from fewshot.evaluation.outputs import file_sha256
from fewshot.inference.run import RunLike, as_loaded_run

__all__ = ["EXPORT_SUFFIX", "METADATA_FILE", "export_backbone"]

EXPORT_SUFFIX = ".pt2"
METADATA_FILE = "fewshot.json"


def export_backbone(run: RunLike, out: str | Path, *, force: bool = False) -> dict[str, Any]:
    """Write the run's backbone to ``out`` (``.pt2``) with its input description; return that description.

    Args:
        run: a run folder (also an archived one) or a loaded run.
        out: the file to write (atomically); must end in ``.pt2``.
        force: replace an existing ``out``.

    Returns:
        The metadata stored as ``fewshot.json``: ``input_shape`` ``[C, H, W]``, ``input_range`` ``[0, 1]``,
        ``features``, ``dataset``, ``preprocessing`` (the run's ``data.options``), ``norm_policy``, ``run``,
        ``checkpoint_sha256``, ``torch``.

    Raises:
        ConfigError: ``out`` has another suffix or exists (without ``force``).
    """
    out = Path(out)
    if out.suffix != EXPORT_SUFFIX:
        raise ConfigError(f"export writes a torch.export program, whose file ends in {EXPORT_SUFFIX}; got {str(out)!r}")
    if out.exists() and not force:
        raise ConfigError(f"refusing to overwrite {str(out)!r}; pass --force or choose another --out")
    loaded = as_loaded_run(run, device="cpu")  # a CPU program: it loads with torch alone, anywhere
    learner = loaded.learner
    if model_device(learner).type != "cpu":  # a copy: the caller's model stays where it is
        learner = copy.deepcopy(learner).cpu()
    example = torch.rand(2, *loaded.image_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), learner.mode(training=False, norm_policy="running", frozen=True):
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        program = torch.export.export(learner.backbone, (example,), dynamic_shapes=({0: batch},))
        features = int(learner.backbone(example).shape[1])
    meta = {
        "input_shape": list(loaded.image_shape),
        "input_range": [0.0, 1.0],
        "features": features,
        "dataset": loaded.cfg.data.dataset,
        "preprocessing": dict(loaded.cfg.data.options),
        "norm_policy": "running",
        "backbone": loaded.cfg.model.backbone,
        "norm": loaded.cfg.model.norm,
        "run": str(loaded.run_dir),
        "checkpoint_sha256": file_sha256(loaded.checkpoint),
        "torch": torch.__version__,
    }
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={METADATA_FILE: json.dumps(meta, indent=2)})
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buffer.getvalue())
    return meta
