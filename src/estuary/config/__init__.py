"""Job configuration: the typed sections of a job file, composed into `ExperimentConfig`.

A leaf layer: these modules import nothing of Estuary's above them (the data, LoRA and server sections are
owned by `estuary.data`, `estuary.lm` and `estuary.serve` and composed in). Loading a job file (overrides,
the strategies' parameter checks) is `estuary.platform.loading.load_config`.
"""

from estuary.config.clients import ClientGroupConfig, ClientResources, ClientsConfig
from estuary.config.experiment import (
    DataConfig,
    EvaluationConfig,
    ExperimentConfig,
    ModelsConfig,
    OutputConfig,
    RayConfig,
    TrainingConfig,
)
from estuary.config.faults import FaultsConfig
from estuary.config.privacy import PrivacyConfig
from estuary.config.section import Section
from estuary.lm.lora import LoraConfig

__all__ = [
    "ClientGroupConfig",
    "ClientResources",
    "ClientsConfig",
    "DataConfig",
    "EvaluationConfig",
    "ExperimentConfig",
    "FaultsConfig",
    "LoraConfig",
    "ModelsConfig",
    "OutputConfig",
    "PrivacyConfig",
    "RayConfig",
    "Section",
    "TrainingConfig",
]
