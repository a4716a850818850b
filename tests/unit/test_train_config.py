"""Server training job validation: ZeRO/offload consistency, DeepSpeed pass-through, resources (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from estuary.errors import ConfigError
from estuary.train import TrainConfig
from estuary.train.checks import check_resources
from estuary.train.zero import deepspeed_config


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        TrainConfig.load(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_build_a_deepspeed_config() -> None:
    cfg = TrainConfig.load({"workers": 3, "micro_batch_size": 2, "grad_accum": 4, "lr": 1e-3})
    ds = deepspeed_config(cfg)
    assert ds["train_batch_size"] == 24 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "none"}
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["optimizer"]["params"]["lr"] == 1e-3
    assert ds["bf16"] == {"enabled": False} and ds["fp16"] == {"enabled": False}
    assert cfg.dist_backend == "gloo" and cfg.resources.bundle() == {"CPU": 1.0}


def test_deepspeed_keys_pass_through_and_merge() -> None:
    cfg = TrainConfig.load({"zero": {"stage": 3, "deepspeed": {
        "gradient_clipping": 0.5, "zero_optimization": {"overlap_comm": True, "stage": 3},
        "activation_checkpointing": {"partition_activations": True}}}})
    ds = deepspeed_config(cfg)
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["overlap_comm"] is True and ds["zero_optimization"]["stage"] == 3
    assert ds["activation_checkpointing"] == {"partition_activations": True}


@pytest.mark.parametrize(("data", "expected"), [
    ({"zero": {"stage": 2, "offload_param": "cpu"}, "resources": {"num_gpus": 1}}, "needs stage 3"),
    ({"zero": {"stage": 0, "offload_optimizer": "cpu"}, "resources": {"num_gpus": 1}}, "needs ZeRO stage 1, 2 or 3"),
    ({"zero": {"stage": 3, "offload_param": "nvme"}, "resources": {"num_gpus": 1}}, "needs nvme_path"),
    ({"zero": {"nvme_path": "/nvme"}}, "nothing is offloaded"),
    ({"zero": {"stage": 2, "offload_optimizer": "cpu"}}, "CPU workers"),
    ({"dtype": "float16"}, "float16 needs GPU workers"),
    ({"backend": "nccl"}, "nccl needs GPU workers"),
    ({"resources": {"num_gpus": 0.5}, "workers": 2}, "NCCL refuses"),
    ({"resources": {"num_gpus": 1.5}}, "whole number of GPUs"),
    ({"resources": {"num_cpus": 0}}, "resources.num_cpus"),
    ({"zero": {"stage": 2, "deepspeed": {"zero_optimization": {"stage": 3}}}}, "contradicts zero.stage"),
    ({"zero": {"deepspeed": {"zero_optimization": {"offload_param": {"device": "cpu"}}}}}, "zero.offload_param"),
    ({"zero": {"deepspeed": {"train_batch_size": 7}}}, "contradicts micro_batch_size x grad_accum x workers"),
    ({"zero": {"deepspeed": {"bf16": {"enabled": True}}}}, "contradicts dtype"),
    ({"steps": 4, "fault_drill_step": 5}, "after the last step"),
    ({"zero": {"stage": 4}}, "zero.stage"),
    ({"zero": {"stag": 2}}, "did you mean 'stage'"),
    ({"workers": 0}, "workers"),
])
def test_inconsistent_settings_are_one_line(data: dict[str, Any], expected: str) -> None:
    assert expected in _error(data)


def test_gpu_settings_that_are_consistent() -> None:
    cfg = TrainConfig.load({"resources": {"num_gpus": 1}, "dtype": "float16",
                            "zero": {"stage": 3, "offload_param": "cpu", "offload_optimizer": "cpu"}})
    ds = deepspeed_config(cfg)
    assert cfg.dist_backend == "nccl" and cfg.resources.bundle() == {"CPU": 1.0, "GPU": 1}
    assert ds["zero_optimization"]["offload_param"] == {"device": "cpu"}
    assert ds["fp16"] == {"enabled": True} and ds["zero_force_ds_cpu_optimizer"] is False
    shared = TrainConfig.load({"resources": {"num_gpus": 0.5}, "workers": 2, "backend": "gloo"})
    assert shared.dist_backend == "gloo"


def test_more_workers_than_resources() -> None:
    two_cpus = [{"CPU": 2.0, "memory": 1e10}]
    check_resources(TrainConfig(workers=2), two_cpus)
    with pytest.raises(ConfigError, match=r"need CPU=3, but the Ray cluster has 2; lower train.workers"):
        check_resources(TrainConfig(workers=3), two_cpus)
    with pytest.raises(ConfigError, match=r"need GPU=2, but the Ray cluster has 0; .* train.resources.num_gpus$"):
        check_resources(TrainConfig(workers=2, resources={"num_gpus": 1}), two_cpus)
    with pytest.raises(ConfigError, match=r"lower train.workers or train.resources.custom.slot$"):
        check_resources(TrainConfig(workers=1, resources={"custom": {"slot": 1}}), two_cpus)
    # Enough in total, but no node holds a whole worker (1.5 CPUs) twice.
    halves = [{"CPU": 1.5}, {"CPU": 1.5}]
    check_resources(TrainConfig(workers=2, resources={"num_cpus": 1.5}), halves)
    with pytest.raises(ConfigError, match="only 1 of 2 workers"):
        check_resources(TrainConfig(workers=2, resources={"num_cpus": 1.5}, placement_strategy="STRICT_PACK"),
                        halves)
    with pytest.raises(ConfigError, match="only 2 of 3 workers"):
        check_resources(TrainConfig(workers=3, resources={"num_cpus": 1.0}), halves)


def test_resources_held_by_others() -> None:
    nodes = [{"CPU": 2.0}]
    check_resources(TrainConfig(workers=2), nodes, available={"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"only 1 is free .*lower train.resources.num_cpus, or raise"):
        check_resources(TrainConfig(workers=2), nodes, available={"CPU": 1.0})
    check_resources(TrainConfig(workers=2, resources={"num_cpus": 0.5}), nodes, available={"CPU": 1.0})


def test_init_adapter_must_be_a_peft_folder_of_the_jobs_shape(tmp_path: Path) -> None:
    from estuary.train.checks import check_init_adapter

    with pytest.raises(ConfigError, match=r"^train.init_adapter: .* has no adapter_config.json; give a PEFT"):
        check_init_adapter(TrainConfig(init_adapter=str(tmp_path)), ["q_proj", "v_proj"])
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 16, "target_modules": ["v_proj", "q_proj"]}))
    with pytest.raises(ConfigError, match=r"has r=16, targets \['q_proj', 'v_proj'\]; the job has train.lora r=8"):
        check_init_adapter(TrainConfig(init_adapter=str(tmp_path)), ["q_proj", "v_proj"])
    check_init_adapter(TrainConfig(init_adapter=str(tmp_path), lora={"r": 16}), ["q_proj", "v_proj"])  # any order
