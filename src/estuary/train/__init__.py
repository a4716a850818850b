"""Server LLM fine-tuning on aggregated client knowledge: Ray Train workers running DeepSpeed over LoRA.

- `TrainConfig` (`train_config.py`): the job — workers and their resources, ZeRO (`ZeroConfig`), LoRA,
  objective (`ObjectiveConfig`), steps, checkpoints, failures.
- `ServerTrainer.fit(knowledge)` (`trainer.py`) → `TrainOutcome` (adapter folder, checkpoint, losses);
  `train_server_adapter` returns just the adapter folder; `train_and_publish` also makes it the next
  version of the served adapter (`ServerLLM.publish`).
- `objective.py`: the losses (SFT, top-k KL with a tail bucket and temperature, their mix), pure functions.
- `knowledge.py`: the records (SFT examples, top-k distributions), as a Ray Dataset, and batches of them.
"""

from estuary.lm.lora import LoraConfig
from estuary.lm.objective import IGNORE, LossParts, mix_losses, objective, sft_loss, topk_kl_loss
from estuary.train.ds_checkpoint import TrainerState
from estuary.train.objective_config import ObjectiveConfig
from estuary.train.train_config import TrainConfig
from estuary.train.trainer import ServerTrainer, TrainOutcome, train_and_publish, train_server_adapter
from estuary.train.zero_config import ZeroConfig

__all__ = [
    "IGNORE",
    "LoraConfig",
    "LossParts",
    "ObjectiveConfig",
    "ServerTrainer",
    "TrainConfig",
    "TrainOutcome",
    "TrainerState",
    "ZeroConfig",
    "mix_losses",
    "objective",
    "sft_loss",
    "topk_kl_loss",
    "train_and_publish",
    "train_server_adapter",
]
