"""``bench data``: the first decode goes to a private empty cache, the second load reads it; the CSV records both."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from fewshot.cli.bench import load_benchmark
from fewshot.cli.main import main


def _folder(root):
    rng = np.random.default_rng(0)
    for c in range(3):
        folder = root / "imagefolder" / "train" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8), mode="L").save(folder / f"{i}.png")


def test_rows_count_the_images_and_the_user_cache_is_left_alone(tmp_path, monkeypatch):
    _folder(tmp_path)
    user_cache = tmp_path / "user-cache"
    monkeypatch.setenv("FEWSHOT_CACHE", str(user_cache))
    bench = load_benchmark("bench_data")
    (row,) = bench.run("imagefolder", "folder", ["train"], data_root=str(tmp_path))
    assert (row.split, row.images) == ("train", 12) and row.first_s >= 0 and row.cached_s >= 0
    assert os.environ["FEWSHOT_CACHE"] == str(user_cache) and not user_cache.exists()


def test_the_cli_writes_the_csv_with_its_command_and_refuses_to_overwrite(tmp_path, capsys):
    _folder(tmp_path)
    out = tmp_path / "bench_data.csv"
    args = ["bench", "data", "--dataset", "imagefolder", "--protocol", "folder", "--splits", "train",
            "--data-root", str(tmp_path), "--write", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# command: ") and "bench data" in lines[0]
    assert lines[2] == "dataset,protocol,split,images,megabytes,first_s,cached_s"
    assert lines[3].startswith("imagefolder,folder,train,12,")
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
