"""LoRA — the paper's parameter-efficient baseline: Phase 2 trains PEFT LoRA adapters (with their own learning
rate) instead of the full model; the adapters are merged into a plain safetensors checkpoint for evaluation."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from ..base import Hooks, Parameters, TrainingStrategy, register


class Params(Parameters):
    """LoRA's parameters (PEFT ``LoraConfig``) and its own learning rate."""

    r: Annotated[int, Field(gt=0)] = 16
    alpha: Annotated[float, Field(gt=0)] = 32
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    learning_rate: Annotated[float, Field(gt=0, lt=1)] = 2e-4

    @field_validator("target_modules")
    @classmethod
    def _no_head(cls, v):
        if not v:
            raise ValueError("target_modules must not be empty")
        if "lm_head" in v:
            raise ValueError("TRL refuses a LoRA adapter on lm_head; leave it out of target_modules")
        return v


@register
class LoRA(TrainingStrategy):
    """LoRA: Phase 2 trains merged-at-the-end adapters instead of the full model."""

    name = "LoRA"
    order = 40
    Params = Params

    def hparams(self, params: dict, hparams):
        return hparams.model_copy(update={"learning_rate": params["learning_rate"]})

    def prepare(self, run, cfg, progress: bool = True) -> Hooks:
        from peft import LoraConfig

        p = run.variant.params
        return Hooks(peft_config=LoraConfig(r=p["r"], lora_alpha=p["alpha"], lora_dropout=p["dropout"],
                                            target_modules=list(p["target_modules"]), task_type="CAUSAL_LM"))
