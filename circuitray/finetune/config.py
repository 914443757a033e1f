"""The configuration of one fine-tune: the single source of its defaults.

``circuitray finetune`` builds its options from these fields, and ``finetune.json``
records all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

__all__ = ["LORA_TARGETS", "FinetuneConfig"]

# Linear layers of Gemma-2 / Llama blocks that LoRA adapts by default.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tune of a causal LM on constraint sentences.

    Attributes:
        base: The model to fine-tune: a bundled name (``organism-base``), a local HF
            folder or a hub id (``google/gemma-2-2b``).
        out: Output folder: ``finetune.json`` and one HF folder per checkpoint.
        transcoders: Transcoders whose reconstruction of each checkpoint's MLP outputs
            is measured, and which ``circuitray series`` attributes with (a
            circuit-tracer reference, e.g. ``gemma``; default: the bundled model's).
        data: ``ws2`` (the WS2 corpus's train split) or a prompt file with a
            ``target`` column (rows whose ``split`` is ``heldout`` are held out).
        ws2_n: WS2 corpus size (``data: ws2``).
        ws2_seed: WS2 corpus seed.
        method: ``full`` (every weight) or ``lora`` (peft adapters, merged into the
            weights of every saved checkpoint).
        lora_r: LoRA rank.
        lora_alpha: LoRA scale numerator.
        lora_dropout: LoRA dropout.
        lora_targets: Module names LoRA adapts.
        steps: Optimizer steps.
        batch_size: Sentences per step (per worker under Ray Train).
        lr: Peak learning rate (linear warm-up, then cosine decay to 0.1 x).
        warmup: Warm-up steps (default: steps // 20).
        weight_decay: AdamW weight decay.
        max_len: Tokens per sentence, BOS included.
        checkpoints: Checkpoints saved, step 0 (the base) and the last included.
        first_checkpoint: The first step after 0 that is saved (log spacing).
        spacing: ``log`` or ``linear`` checkpoint spacing.
        eval_per_type: Held-out prompts per constraint type evaluated per checkpoint
            (and the default prompts of ``circuitray series``).
        seed: Seeds batch order and LoRA initialisation.
        threads: torch threads (None: torch's default).
        device: ``cuda``, ``cpu`` or None (CUDA when available).
    """

    base: str
    out: str
    transcoders: str | None = None
    data: str = "ws2"
    ws2_n: int = 6000
    ws2_seed: int = 0
    method: str = "full"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = field(default=LORA_TARGETS)
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int | None = None
    weight_decay: float = 0.01
    max_len: int = 32
    checkpoints: int = 8
    first_checkpoint: int = 4
    spacing: str = "log"
    eval_per_type: int = 20
    seed: int = 0
    threads: int | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        if self.method not in ("full", "lora"):
            raise ValueError(f"method must be 'full' or 'lora', got {self.method!r}")
        if self.spacing not in ("log", "linear"):
            raise ValueError(f"spacing must be 'log' or 'linear', got {self.spacing!r}")
        for name in ("steps", "batch_size", "max_len", "first_checkpoint", "eval_per_type",
                     "lora_r", "ws2_n"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoints < 2:
            raise ValueError(f"checkpoints must be >= 2, got {self.checkpoints}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
