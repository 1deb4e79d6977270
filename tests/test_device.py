"""Device selection (fewshot.device): spellings, auto, CUDA asked for without CUDA, and the CLI's exit code 2."""

from __future__ import annotations

import pytest
import torch

from fewshot.cli.main import main
from fewshot.device import DeviceError, check_device_spec, device_facts, resolve_device
from fewshot.errors import ConfigError


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_valid_spellings_pass_the_spelling_check(spec):
    assert check_device_spec(spec) == spec


@pytest.mark.parametrize("spec", ["gpu", "CPU", "cuda:", "cpu:0", "auto:1", "cuda:-1", "", 0, None])
def test_misspelled_devices_are_refused_with_the_choices(spec):
    with pytest.raises(DeviceError, match=r"auto \| cpu \| cuda \| cuda:N"):
        check_device_spec(spec)


def test_device_error_is_a_config_error():
    assert issubclass(DeviceError, ConfigError)


def test_cpu_resolves_to_the_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_takes_the_first_cuda_device_or_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_cuda_without_cuda_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="torch sees no CUDA device") as info:
            resolve_device(spec)
        assert "\n" not in str(info.value) and "docs/gpu.md" in str(info.value)


def test_cuda_index_out_of_range_names_the_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"2 CUDA device\(s\): cuda:0..cuda:1"):
        resolve_device("cuda:2")


def test_cpu_facts_have_no_gpu_fields():
    facts = device_facts(torch.device("cpu"))
    assert facts["device"] == "cpu"
    assert facts["gpu"] is None and facts["driver"] is None and facts["gpu_memory_gib"] is None
    assert facts["cuda"] == torch.version.cuda


@pytest.mark.parametrize("command", [["train", "--dry-run"], ["bench", "device", "--steps", "1"]])
def test_cli_device_cuda_without_cuda_exits_2_with_one_line(monkeypatch, capsys, command):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*command, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: device 'cuda' asked for") and "\n" not in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_facts_name_the_gpu():
    facts = device_facts(resolve_device("cuda"))
    assert facts["device"] == "cuda:0" and facts["gpu"] and facts["cuda"]


@pytest.mark.parametrize(
    "argv",
    [
        ["train"],
        ["study"],
        ["sweep", "--grid", "g.yaml"],
        ["eval", "--run", "r"],
        ["compare", "--runs", "r", "s"],
        ["predict", "--run", "r", "--support", "s", "--query", "q"],
        ["embed", "--run", "r", "--images", "i", "--out", "o.npy"],
        ["bench", "device"],
    ],
)
def test_every_model_command_takes_device(argv):
    from fewshot.cli.main import build_parser

    assert build_parser().parse_args([*argv, "--device", "cuda:1"]).device == "cuda:1"
    assert build_parser().parse_args(argv).device is None  # default: the config key (auto)


def test_chosen_device_overrides_the_config_key(monkeypatch):
    from fewshot.device import choose_device, run_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    try:
        choose_device("cpu")
        assert run_device("auto") == torch.device("cpu")
        with pytest.raises(DeviceError):
            choose_device("cuda")
    finally:
        choose_device(None)
    with pytest.raises(DeviceError):
        run_device("cuda")  # nothing chosen: the config key decides
