"""Use a trained run: classify your own images, extract features, export the backbone.

``load_run(path)`` loads a run folder (``runs/...`` or an archived ``results/runs/...``); ``predict(run, support,
query)`` classifies query images among the classes of a labelled support folder; ``embed(run, images)`` returns
backbone features; ``export_backbone(run, out)`` writes a ``torch.export`` program loadable without fewshot.
All preprocess images exactly as the run's training data (see :mod:`fewshot.inference.images`).
"""

from fewshot.inference.embed import Embeddings, embed
from fewshot.inference.export import export_backbone
from fewshot.inference.predict import Predictions, predict
from fewshot.inference.run import LoadedRun, load_run

__all__ = ["Embeddings", "LoadedRun", "Predictions", "embed", "export_backbone", "load_run", "predict"]
