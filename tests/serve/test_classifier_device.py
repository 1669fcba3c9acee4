"""The classifier's device settings: config validation, and the deployment handing them to the engine mapping."""

import pytest

from index.errors import ConfigError
from serve.config import ClassifierConfig, TurnoutConfig, parse_app_args


def test_defaults_leave_the_device_to_the_installed_vllm():
    settings = ClassifierConfig()
    assert settings.device == "auto" and settings.enforce_eager is None and settings.gpu_memory_utilization == 0.9
    for name in ("device", "gpu_memory_utilization", "enforce_eager"):
        assert ClassifierConfig.model_fields[name].description


@pytest.mark.parametrize("classifier, fragment", [
    ({"device": "gpu"}, "classifier.device"),
    ({"device": "cuda:0"}, "classifier.device"),
    ({"gpu_memory_utilization": 0}, "classifier.gpu_memory_utilization"),
    ({"gpu_memory_utilization": 1.2}, "classifier.gpu_memory_utilization"),
    ({"enforce_eager": "sometimes"}, "classifier.enforce_eager"),
])
def test_bad_device_settings_are_one_line_config_errors(classifier, fragment):
    with pytest.raises(ConfigError) as info:
        parse_app_args({"classifier": classifier})
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_the_deployment_passes_its_settings_to_the_engine(monkeypatch, tmp_path):
    from models import causal_llm
    from serve.classifier import ClassifierDeployment

    seen = {}

    class Stop(Exception):
        pass

    def from_artifacts(root, **kwargs):
        seen.update(kwargs)
        raise Stop  # the engine itself is not the subject here: vllm_engine_args' tests cover the mapping

    monkeypatch.setattr(causal_llm.CausalLLMRouter, "from_artifacts", staticmethod(from_artifacts))
    for name in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND"):
        monkeypatch.delenv(name, raising=False)  # the deployment sets them: restored after the test
    config = TurnoutConfig.model_validate({"artifacts": {"home": str(tmp_path)}, "classifier": {
        "device": "cuda", "gpu_memory_utilization": 0.6, "enforce_eager": False, "dtype": "bfloat16", "max_batch_size": 16}})
    with pytest.raises(Stop):
        ClassifierDeployment(config)
    assert {k: seen[k] for k in ("backend", "device", "gpu_memory_utilization", "enforce_eager", "dtype", "batch_size")} == {
        "backend": "vllm", "device": "cuda", "gpu_memory_utilization": 0.6, "enforce_eager": False, "dtype": "bfloat16",
        "batch_size": 16}
    # and what the engine then gets on a GPU for these settings
    args = causal_llm.vllm_engine_args("/ckpt", 256, device="cuda", dtype=seen["dtype"], max_num_seqs=seen["batch_size"],
                                       gpu_memory_utilization=seen["gpu_memory_utilization"],
                                       enforce_eager=seen["enforce_eager"])
    assert args["gpu_memory_utilization"] == 0.6 and args["enforce_eager"] is False and args["max_num_seqs"] == 16
