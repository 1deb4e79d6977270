"""``bench device`` plumbing on the CPU: variants, ratios, the CSV with the device and the command."""

from __future__ import annotations

import math

import pytest
import torch

from fewshot.cli.bench import load_benchmark
from fewshot.cli.main import main

CASES = "protonet_bn_omniglot_60w1s5q,protonet_swbn_omniglot_60w1s5q"


def test_rows_pair_the_trainer_with_the_plain_loop_and_swbn_with_bn():
    bench = load_benchmark("bench_device")
    rows = bench.run(device=torch.device("cpu"), only=CASES.split(","), steps=1, rounds=1, warmup=0, per_class=4)
    got = [(r.case, r.variant) for r in rows]
    assert got == [
        ("protonet_bn_omniglot_60w1s5q", "trainer"),
        ("protonet_bn_omniglot_60w1s5q", "plain"),
        ("protonet_swbn_omniglot_60w1s5q", "trainer"),
    ]
    bn, plain, swbn = rows
    assert plain.ratio_to_plain == 1.0 and all(r.device == "cpu" and r.gpu == "-" for r in rows)
    assert math.isclose(bn.ratio_to_plain, bn.steps_per_second / plain.steps_per_second, rel_tol=1e-9)
    assert swbn.swbn_over_bn == round(bn.steps_per_second / swbn.steps_per_second, 3)
    assert bn.swbn_over_bn is None and plain.swbn_over_bn is None


def test_plain_episode_holds_the_samplers_images():
    bench = load_benchmark("bench_device")
    split = bench.synthetic_split(10, 4, (3, 12, 12))
    from episodes.sampler import EpisodeSampler

    sampler = EpisodeSampler(split, 5, 1, 2, seed=3)
    plain = bench._plain_episode(sampler, torch.from_numpy(split.images), 7)
    ep = sampler[7]
    assert torch.equal(plain.support_x, ep.support_x) and torch.equal(plain.query_x, ep.query_x)
    assert torch.equal(plain.query_y, ep.query_y) and plain.n_way == 5


def test_unknown_case_is_a_config_error(capsys):
    assert main(["bench", "device", "--device", "cpu", "--cases", "nope"]) == 2
    assert "unknown bench device case(s) ['nope']" in capsys.readouterr().err


def test_cli_writes_the_csv_with_device_and_command(tmp_path, capsys):
    out = tmp_path / "bench_device.csv"
    argv = ["bench", "device", "--device", "cpu", "--cases", CASES.split(",")[0], "--steps", "1", "--rounds", "1",
            "--warmup", "0", "--images-per-class", "4", "--write", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = out.read_text().splitlines()
    assert text[0].startswith("# command: python run_episode.py bench device --device cpu")
    assert "device cpu" in text[1] and "gpu None" in text[1]
    assert text[2].startswith("device,gpu,case,variant,precision,steps_per_second,ratio_to_plain,swbn_over_bn")
    assert len(text) == 5
    assert main(argv) == 2  # no --force: an existing CSV is kept
    assert "already exists" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_cuda_without_cuda_exits_2():
    assert main(["bench", "device", "--device", "cuda"]) == 2
