"""`ObjectiveConfig`: what the server LLM is trained to do with the clients' knowledge."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ObjectiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    distill_weight: float = Field(
        0.0, ge=0, le=1,
        description="λ of the mix (1-λ)·SFT + λ·KD. 0 = supervised fine-tuning on the selected examples only, "
        "1 = distillation towards the clients' top-k distributions only; FedMKT uses 0.1, DistilDP 0.4. A batch "
        "that has only one kind of target uses that term alone.",
    )
    temperature: float = Field(
        1.0, gt=0,
        description="Distillation temperature T: student logits and teacher log-probabilities are divided by T "
        "and the KL is scaled by T² (Hinton). 1.0 is the published default of FedMKT and DistilDP.",
    )
    tail_bucket: bool = Field(
        True,
        description="Distil over k+1 buckets: the top-k tokens plus one bucket holding the mass outside them "
        "(1 - Σ top-k probabilities), for teacher and student alike. False: renormalise the teacher over its "
        "top k and match the student's probabilities of those tokens only.",
    )
