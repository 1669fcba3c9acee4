"""index.device: which device "auto", "cpu" and "cuda" resolve to, and when bf16 autocast is on."""

import pytest

from index.device import autocast, native_bf16, pick_device
from index.errors import ConfigError

torch = pytest.importorskip("torch")


@pytest.fixture
def gpu(monkeypatch):
    """Pretend torch sees a CUDA GPU of a given compute capability (no CUDA call is made)."""

    def make(major: int = 9) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))

    return make


def test_auto_is_the_gpu_when_torch_sees_one(gpu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device() == "cpu" and pick_device("auto") == "cpu" and pick_device("cpu") == "cpu"
    gpu()
    assert pick_device("auto") == "cuda" and pick_device("cuda") == "cuda"
    assert pick_device("cpu") == "cpu"  # asking for the CPU is honoured even with a GPU


def test_cuda_without_a_gpu_and_unknown_names_are_config_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU.*num_gpus"):
        pick_device("cuda")
    for bad in ("gpu", "CUDA", "cuda:0", "", "mps"):
        with pytest.raises(ConfigError, match="auto, cpu, cuda"):
            pick_device(bad)


def test_bf16_is_native_only_from_ampere_on(gpu, monkeypatch):
    assert not native_bf16("cpu")  # the CPU answer is the callers' own (flag or AVX512-BF16 probe)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not native_bf16("cuda")
    gpu(7)  # Volta/Turing: bf16 only emulated
    assert not native_bf16("cuda")
    gpu(8)
    assert native_bf16("cuda") and native_bf16("cuda:1")


def test_autocast_on_the_cpu_is_as_asked():
    with autocast("cpu", True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast("cpu", False):
        assert not torch.is_autocast_enabled("cpu")
    x = torch.randn(4, 4)
    with autocast("cpu", False):
        assert (x @ x).dtype == torch.float32


def test_autocast_on_an_old_gpu_stays_fp32(gpu, monkeypatch):
    seen = {}

    class Recorder:
        def __init__(self, device_type, dtype=None, enabled=True):
            seen.update(device_type=device_type, dtype=dtype, enabled=enabled)

    monkeypatch.setattr(torch, "autocast", Recorder)
    gpu(7)
    autocast("cuda", True)
    assert seen == {"device_type": "cuda", "dtype": torch.bfloat16, "enabled": False}
    gpu(9)
    autocast("cuda:0", True)
    assert seen == {"device_type": "cuda", "dtype": torch.bfloat16, "enabled": True}
    autocast("cuda", False)
    assert seen["enabled"] is False
