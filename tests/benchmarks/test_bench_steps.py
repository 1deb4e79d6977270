"""benchmarks/bench_steps.py and reference_loops.py: variants, the issue-13 claims, the CSV, the reference loop.

The measurement itself takes minutes; it is a benchmark, not a test.
"""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F

from episodes.episode import Episode
from fewshot.cli.bench import load_benchmark
from fewshot.cli.main import main
from fewshot.learners.protonet import ProtoNet

bench = load_benchmark("bench_steps")
loops = load_benchmark("reference_loops")


def _rows(setting, **ms):
    return [bench.StepRow(setting, variant, 10, t, t) for variant, t in ms.items()]


def test_claims_check_each_target_of_issue_13_against_the_measured_ratios():
    rows = _rows(
        "protonet omniglot 60w1s5q",
        batchnorm=100.0, swbn=120.0, plain=105.0, **{"iternorm[group_size=16]": 200.0, "dbn[group_size=16]": 110.0},
    ) + _rows(
        "maml omniglot 5w1s15q mb32 2nd-order", batchnorm=1000.0, swbn=1350.0,
        **{"batchnorm[primitive]": 1500.0, "batchnorm[vmap]": 1250.0},
    )  # fmt: skip
    assert bench.claims(rows) == [
        "protonet omniglot 60w1s5q: batchnorm / plain step time 0.952 (target <= 1.00): holds",
        "protonet omniglot 60w1s5q: swbn / batchnorm step time 1.200 (target <= 1.25): holds",
        "protonet omniglot 60w1s5q: swbn / iternorm[group_size=16] 0.600 (target < 1): holds",
        "protonet omniglot 60w1s5q: swbn / dbn[group_size=16] 1.091 (target < 1): MISSED",
        "maml omniglot 5w1s15q mb32 2nd-order: swbn / batchnorm step time 1.350 (target <= 1.30): MISSED",
        "maml omniglot 5w1s15q mb32 2nd-order: batchnorm meta-step speed-up over the task loop with primitive-op BN "
        "(the pre-issue path) 1.500 (target >= 1.30): holds",
        "maml omniglot 5w1s15q mb32 2nd-order: batchnorm[vmap] meta-step speed-up over the task loop with "
        "primitive-op BN (the pre-issue path) 1.200 (target >= 1.30): MISSED",
    ]


def test_variants_compare_swbn_at_its_default_group_size_and_only_protonet_gets_reference_loops():
    from fewshot.norms import create

    protonet = {v.label: v for v in bench.variants("protonet")}
    maml = {v.label for v in bench.variants("maml")}
    assert set(protonet) - maml == {"plain", "plain[inplace]", "default"}
    assert maml - set(protonet) == {"batchnorm[vmap]", "swbn[vmap]"}
    vmapped = {v.label: v for v in bench.variants("maml") if v.label.endswith("[vmap]")}
    assert all(v.overrides == ("learner.kwargs.vmap_tasks=true",) for v in vmapped.values())
    assert [v.norm for v in vmapped.values()] == ["batchnorm", "swbn"]
    assert protonet["batchnorm[primitive]"].primitive and not protonet["batchnorm"].primitive
    assert create("swbn", 64).group_size == dict(protonet["dbn[group_size=16]"].norm_kwargs)["group_size"]


def test_settings_name_existing_configs_with_the_issues_episode_sizes():
    sizes = []
    for s in bench.SETTINGS:
        t = s.resolve().train
        sizes.append((t.n_way, t.n_shot, t.n_query, t.meta_batch))
    assert sizes == [(60, 1, 5, 1), (5, 1, 15, 1), (20, 5, 15, 1), (5, 1, 15, 32), (5, 1, 1, 1)]
    assert bench.FIXED_COST == bench.SETTINGS[-1].label


def test_claims_give_the_fixed_cost_setting_a_difference_in_ms_and_no_target():
    rows = _rows(bench.FIXED_COST, batchnorm=11.5, swbn=14.0, plain=10.0)
    rows += _rows("protonet omniglot 60w1s5q", batchnorm=100.0, plain=105.0)
    assert bench.claims(rows) == [
        f"{bench.FIXED_COST}: batchnorm step time - plain +1.50 ms (fixed cost per step; no target)",
        "protonet omniglot 60w1s5q: batchnorm / plain step time 0.952 (target <= 1.00): holds",
    ]
    assert bench.claims(_rows(bench.FIXED_COST, batchnorm=11.5)) == []


def test_ratios_relate_each_variant_to_bn_the_plain_loop_and_its_own_task_loop():
    rows = bench.with_ratios(
        _rows("maml x", batchnorm=100.0, swbn=130.0, plain=80.0, **{"batchnorm[vmap]": 50.0, "swbn[vmap]": 104.0})
    )
    got = {r.variant: (r.vs_batchnorm, r.speed_vs_plain, r.speed_vs_loop) for r in rows}
    assert got["batchnorm[vmap]"] == pytest.approx((0.5, 1.6, 2.0))
    assert got["swbn[vmap]"] == pytest.approx((1.04, 80.0 / 104.0, 1.25))
    assert got["swbn"][0] == pytest.approx(1.3) and got["swbn"][2] != got["swbn"][2]  # no loop ratio: nan


def test_csv_starts_with_the_command_and_round_trips(tmp_path):
    rows = _rows("protonet omniglot 60w1s5q", batchnorm=100.0, plain=90.0)
    rows[0].vs_batchnorm, rows[0].speed_vs_plain = 1.0, 0.9
    path = bench.write_csv(rows, tmp_path / "s.csv", {"torch": "x"}, "python run_episode.py bench train --write")
    lines = path.read_text().splitlines()
    assert lines[0] == "# command: python run_episode.py bench train --write"
    parsed = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert [(r["variant"], r["ms"], r["speed_vs_plain"]) for r in parsed] == [
        ("batchnorm", "100.0", "0.9000"),
        ("plain", "90.0", "nan"),
    ]
    with pytest.raises(FileExistsError, match="--force"):
        bench.write_csv(rows, path, {}, "cmd")


@pytest.mark.parametrize("kw", [{"protonet_steps": 0}, {"maml_steps": 0}, {"warmup": -1}])
def test_run_rejects_bad_counts_before_measuring(kw):
    with pytest.raises(ValueError, match="step counts"):
        bench.run(**kw)


def test_bench_train_rejects_unknown_sections(capsys):
    assert main(["bench", "train", "--sections", "trainer,nope"]) == 2
    assert "--sections" in capsys.readouterr().err


@pytest.mark.parametrize(("channels_last", "inplace_relu"), [(True, False), (True, True), (False, False)])
def test_reference_loop_is_protonet_with_torch_layers(channels_last, inplace_relu):
    g = torch.Generator().manual_seed(0)
    sx, qx = torch.rand(6, 1, 28, 28, generator=g), torch.rand(9, 1, 28, 28, generator=g)
    sy, qy = torch.arange(3).repeat_interleave(2), torch.arange(3).repeat_interleave(3)
    ep = Episode(sx, sy, qx, qy, class_ids=("a", "b", "c"), support_ids=tuple("123456"),
                 query_ids=tuple("abcdefghi"), index=0)  # fmt: skip
    loop = loops.ReferenceProtoNet(1, channels_last=channels_last, inplace_relu=inplace_relu)
    assert [m.inplace for m in loop.model if isinstance(m, torch.nn.ReLU)] == [inplace_relu] * 4
    learner = ProtoNet(loop.model)
    z = loop.model(torch.cat([sx, qx]))
    want = F.cross_entropy(learner.logits(z[:6], sy, z[6:], 3), qy).item()
    before = [p.detach().clone() for p in loop.model.parameters()]
    assert loop.step(ep) == pytest.approx(want, rel=1e-5)
    assert all(not torch.equal(a, b) for a, b in zip(before, loop.model.parameters(), strict=True))
    assert loop.model[0].weight.is_contiguous(memory_format=loop.memory_format)


def test_select_takes_exact_names_or_parts_in_table_order_and_refuses_unknown_ones():
    known = [s.label for s in bench.SETTINGS]
    assert bench.select(None, known, "setting") == known
    assert bench.select(["miniimagenet 20w5s15q", "omniglot 60w"], known, "setting") == [
        "protonet omniglot 60w1s5q",
        "protonet miniimagenet 20w5s15q",
    ]
    assert bench.select(["batchnorm"], bench.all_variant_labels(), "variant") == ["batchnorm"]  # exact wins
    assert bench.select(["primitive"], bench.all_variant_labels(), "variant") == ["batchnorm[primitive]"]
    with pytest.raises(ValueError, match=r"no setting matches 'cifar'; known settings: 'protonet omniglot"):
        bench.select(["cifar"], known, "setting")


def test_claims_skip_targets_whose_variants_were_not_measured():
    rows = _rows("protonet omniglot 60w1s5q", batchnorm=100.0, swbn=130.0)
    assert bench.claims(rows) == [
        "protonet omniglot 60w1s5q: swbn / batchnorm step time 1.300 (target <= 1.25): MISSED",
    ]
    assert bench.claims(_rows("maml omniglot 5w1s15q mb32 2nd-order", swbn=1.0)) == []


def test_bench_train_rejects_zero_threads_and_unknown_variants(capsys):
    assert main(["bench", "train", "--sections", "steps", "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
    assert main(["bench", "train", "--sections", "steps", "--variants", "nope"]) == 2
    assert "no variant matches 'nope'" in capsys.readouterr().err
