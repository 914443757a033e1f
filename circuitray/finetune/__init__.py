"""Fine-tuning inside circuitray: K checkpoints and a manifest per fine-tune.

- :mod:`~circuitray.finetune.config`: :class:`FinetuneConfig`, every hyper-parameter.
- :mod:`~circuitray.finetune.schedule`: log-spaced checkpoint steps.
- :mod:`~circuitray.finetune.data`: training texts and held-out prompts, checksummed.
- :mod:`~circuitray.finetune.train_lm`: the training loop itself (deterministic causal-LM
  training with checkpoints on a schedule), also the organism's base and tuned stages.
- :mod:`~circuitray.finetune.lora`: LoRA adapters (peft) and merged checkpoints.
- :mod:`~circuitray.finetune.evaluate`: per-checkpoint held-out accuracy, target
  probability and how well the base transcoders still reconstruct each MLP output.
- :mod:`~circuitray.finetune.local`: one fine-tune on one device
  (``circuitray finetune``); the organism's base -> tuned stage is one call of it.
- :mod:`~circuitray.finetune.ray_train`: the same loop as a Ray Train job
  (``TorchTrainer``), resumable from its last checkpoint.
- :mod:`~circuitray.finetune.manifest`: ``finetune.json`` (no torch), read by
  ``circuitray series``.
"""
