"""export: the backbone as a torch.export program, loaded and run in a fresh process that never imports fewshot."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fewshot
from fewshot.cli.main import main
from fewshot.errors import ConfigError
from fewshot.inference.images import load_images

LOADER = """
import json, sys, numpy as np, torch
extra = {"fewshot.json": ""}
program = torch.export.load("backbone.pt2", extra_files=extra)
x = torch.from_numpy(np.load("x.npy"))
np.save("y.npy", program.module()(x).detach().numpy())
assert not any(m == "fewshot" or m.startswith(("fewshot.", "episodes")) for m in sys.modules), "fewshot was imported"
print(json.loads(extra["fewshot.json"])["input_shape"])
"""


@pytest.mark.parametrize("which", ["protonet", "maml"])
def test_exported_backbone_loads_without_fewshot_and_matches(toy, own_images, tmp_path, capsys, which) -> None:
    out = tmp_path / "backbone.pt2"
    assert main(["export", "--run", str(toy[which]), "--out", str(out)]) == 0
    assert 'torch.export.load("' in capsys.readouterr().out
    run = fewshot.load_run(toy[which])
    files = [f for c in "abc" for f in own_images["support_files"][c]]
    x = load_images(files, run.cfg, run.image_shape)  # 6 images: another batch size than the export's example
    np.save(tmp_path / "x.npy", x.numpy())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -I: isolated (no PYTHONPATH, no user site, cwd not on sys.path); run from the temp folder
    done = subprocess.run([sys.executable, "-I", "-c", LOADER], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip()) == [1, 16, 16]
    expected = fewshot.embed(run, files).features  # the running-statistics features, computed in this process
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-5, atol=1e-6)


def test_export_refuses_other_suffixes_and_overwriting(toy, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"ends in \.pt2; got .*model\.pt"):
        fewshot.export_backbone(toy["protonet"], tmp_path / "model.pt")
    out = tmp_path / "b.pt2"
    out.write_bytes(b"mine")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        fewshot.export_backbone(toy["protonet"], out)
    assert out.read_bytes() == b"mine"
    meta = fewshot.export_backbone(toy["protonet"], out, force=True)
    assert meta["features"] == 8 and meta["preprocessing"]["mode"] == "L" and meta["norm_policy"] == "running"
    assert torch.export.load(out).module()(torch.zeros(1, 1, 16, 16)).shape == (1, 8)
