"""On CPU the LM head scores only the labelled positions, and the loss and its gradients stay the same.

:func:`evertune.tuning.trainer.score_label_positions_only` switches TRL's fused LM head to its compact branch on
CPU (by default it projects every position there). The test runs one batch of the tiny model's
:func:`~evertune.tuning.trainer.build_trainer` through ``compute_loss`` and ``backward`` both ways, counting the
rows the fused head's kernel receives. It fails if the switch stops reaching TRL (a TRL release renames the
hook: the counts would be equal) or if the compact branch changed the loss or any LoRA gradient.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evertune.config import load_params, parse_params
from evertune.tuning.train_data import TrainingExamples

WORDS = ("sync export billing notebook invoice plan offline reconnect markdown settings file share folder tag "
         "search archive trash restore device widget").split()


def _rows(n: int) -> list[dict[str, Any]]:
    """Prompt-completion rows with long prompts and short answers, like a RAG example."""
    rows = []
    for i in range(n):
        context = " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(40 + 9 * i))
        rows.append({"prompt": [{"role": "user", "content": f"{context}\nWhat is item {i}?"}],
                     "completion": [{"role": "assistant", "content": f"Item {i} is {WORDS[i]}."}]})
    return rows


def _loss_and_grads(trainer: Any, batch: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    model = trainer.model
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


def test_cpu_lm_head_scores_only_labelled_positions_with_the_same_loss_and_gradients(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    import torch
    import trl.trainer.utils as trl_utils

    from evertune.tuning.trainer import build_trainer, load_model, score_label_positions_only

    data = load_params().to_dict()
    data["train"].update({"max_length": 256, "packing": False, "per_device_train_batch_size": 4,
                          "completion_only_loss": True})
    data["lora"]["lora_dropout"] = 0.0  # both passes must see the same function
    params = parse_params(data)
    loaded = load_model(str(tiny_model_dir), None, params.lora, seed=params.train.seed)
    assert loaded.device == "cpu"
    trainer = build_trainer(loaded, TrainingExamples(_rows(4), [], 0), params.train, tmp_path / "out", [])
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])

    scored_rows: list[int] = []
    original = trl_utils._ChunkedLogProbFunction

    class CountingFunction:
        @staticmethod
        def apply(hidden: Any, *args: Any) -> Any:
            scored_rows.append(int(hidden.shape[0]))
            return original.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", CountingFunction)
    trainer.model.train()
    full_loss, full_grads = _loss_and_grads(trainer, batch)
    before = trl_utils._use_triton
    restore = score_label_positions_only("cpu")
    try:
        compact_loss, compact_grads = _loss_and_grads(trainer, batch)
    finally:
        restore()
    assert trl_utils._use_triton is before

    labels = batch["labels"][:, 1:]
    assert scored_rows == [labels.numel(), int((labels != -100).sum())]
    assert scored_rows[1] < scored_rows[0] / 3  # short answers after long prompts
    assert abs(compact_loss - full_loss) < 1e-6
    assert full_grads.keys() == compact_grads.keys() and full_grads
    for name, grad in full_grads.items():
        assert torch.allclose(grad, compact_grads[name], rtol=1e-5, atol=1e-7), name


def test_the_switch_is_a_no_op_off_cpu() -> None:
    import trl.trainer.utils as trl_utils

    from evertune.tuning.trainer import score_label_positions_only

    before = trl_utils._use_triton
    score_label_positions_only("cuda")()
    assert trl_utils._use_triton is before
