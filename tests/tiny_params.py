"""Params for training the tiny random model in tests: one definition, each test's own fields on top.

The defaults keep a CPU run to seconds and let four to eight steps move the loss: a high LoRA learning rate, a
small adapter, short sequences, no checkpoints unless a test asks (``save_steps`` 50).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evertune.config import Params, load_params, parse_params

TINY_TRAIN = {"learning_rate": 1e-2, "per_device_train_batch_size": 3, "max_length": 96, "save_steps": 50}
TINY_LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}


def tiny_training_params(model_dir: Path, **sections: dict[str, Any]) -> Params:
    """The repository's ``params.yaml`` with ``model_dir`` as the base model, :data:`TINY_TRAIN` and
    :data:`TINY_LORA`, then ``sections`` applied field by field (``train={"max_steps": 8}``, ``cost={...}``)."""
    data = load_params().to_dict()
    data["base_model"] = {"name_or_path": str(model_dir), "revision": None, "sha256": None}
    data["train"].update(TINY_TRAIN)
    data["lora"].update(TINY_LORA)
    for name, fields in sections.items():
        data[name].update(fields)
    return parse_params(data)
