"""The language-model core: plain torch/transformers/PEFT, no Ray.

- `model`: a causal LM and its tokenizer, LoRA adapters attached and swapped (`lora.LoraConfig`).
- `encoding`: examples → token sequences (prompt + completion), batching; `scoring`: completion
  log-probabilities, label scores, evaluation metrics.
- `loop`: the one training loop (`TrainingLoop`) and plain training (`train_steps`); `distill`: distillation
  towards teacher top-k distributions on it; DP-SGD on it is `estuary.privacy.dp_sgd`.
- `objective`: the losses (SFT, top-k KL with a tail bucket, hidden-state MSE); `optim`: AdamW and its exported
  state; `seeding`: deterministic seeds, RNG scopes, the example stream.

Nothing is imported here: `import estuary.lm.<module>` loads torch only where it is used.
"""
