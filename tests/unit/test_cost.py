"""Cost arithmetic: projection of a run's tokens and time, the budget check, device-seconds and price."""

from __future__ import annotations

import pytest

from evertune.config import load_params, parse_params
from evertune.errors import BudgetExceeded, ConfigError
from evertune.tuning.cost import (
    check_budget,
    cost_metrics,
    example_token_counts,
    project_training,
    rate_key,
    training_cost,
)


def params_with(train: dict | None = None, cost: dict | None = None):
    data = load_params().to_dict()
    data["train"].update(train or {})
    data["cost"].update(cost or {})
    return parse_params(data)


def test_max_steps_cover_a_share_of_the_dataset() -> None:
    params = params_with({"max_steps": 5, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                          "max_length": 100})
    counts = [50] * 80  # 4000 tokens, 80 examples
    projection = project_training(counts, params.train, params.cost, device="cpu", n_devices=1, packing=False)
    # 5 steps x 8 sequences = 40 of 80 examples: half an epoch.
    assert (projection.dataset_tokens, projection.sequences, projection.steps) == (4000, 80, 5)
    assert projection.epochs == pytest.approx(0.5) and projection.tokens == 2000
    assert projection.seconds == pytest.approx(2000 / params.cost.expected_tokens_per_second["cpu"])
    # Two GPUs: twice the sequences per step and twice the throughput.
    on_gpus = project_training(counts, params.train, params.cost, device="cuda", n_devices=2, packing=False)
    assert on_gpus.tokens == 4000 and on_gpus.tokens_per_second == 2 * params.cost.expected_tokens_per_second["cuda"]


def test_epochs_without_max_steps_and_packed_sequences() -> None:
    params = params_with({"max_steps": -1, "num_train_epochs": 2, "per_device_train_batch_size": 3,
                          "max_length": 100})
    counts = [40] * 10
    plain = project_training(counts, params.train, params.cost, device="cpu", n_devices=1, packing=False)
    assert (plain.tokens, plain.epochs, plain.steps) == (800, 2.0, 8)  # ceil(10 / 3) = 4 steps per epoch
    packed = project_training(counts, params.train, params.cost, device="cpu", n_devices=1, packing=True)
    assert (packed.sequences, packed.steps, packed.tokens) == (4, 4, 800)  # 400 tokens in 4 packed rows of 100


def test_the_budget_refuses_with_a_clear_reason_and_admits_within_it() -> None:
    params = params_with({"max_steps": 10, "per_device_train_batch_size": 1}, {"max_train_tokens": 999})
    projection = project_training([100] * 10, params.train, params.cost, device="cpu", n_devices=1, packing=False)
    with pytest.raises(BudgetExceeded, match=r"projected 1000 tokens > cost.max_train_tokens=999") as caught:
        check_budget(projection, params.cost)
    assert isinstance(caught.value, ConfigError)  # maps to a failed task, no retry
    assert caught.value.projection["tokens"] == 1000 and caught.value.projection["max_train_tokens"] == 999
    check_budget(projection, params_with(cost={"max_train_tokens": 1000}).cost)  # at the limit: admitted
    check_budget(projection, params.cost.model_copy(update={"max_train_tokens": None}))  # no limit
    slow = params_with(cost={"max_train_seconds": 1, "expected_tokens_per_second": {"cpu": 100}})
    projection = project_training([100] * 10, params.train, slow.cost, device="cpu", n_devices=1, packing=False)
    with pytest.raises(BudgetExceeded, match=r"projected 10 s > cost.max_train_seconds=1 .* at 100 tokens/s"):
        check_budget(projection, slow.cost)


def test_device_seconds_and_estimated_cost() -> None:
    cost = params_with(cost={"rates": {"cpu_hour": 0.5, "gpu_hour": 3.0}, "currency": "EUR"}).cost
    gpu = training_cost(device="cuda", n_devices=2, wall_time_s=1800.0, tokens=10, peak_memory_mb=5.0, cost=cost)
    assert (gpu.device_seconds, gpu.rate_per_hour, gpu.estimated_cost, gpu.currency) == (3600.0, 3.0, 3.0, "EUR")
    cpu = training_cost(device="cpu", n_devices=1, wall_time_s=360.0, tokens=10, peak_memory_mb=5.0, cost=cost)
    assert cpu.estimated_cost == pytest.approx(0.05)
    assert (rate_key("cuda"), rate_key("cpu"), rate_key("mps")) == ("gpu_hour", "cpu_hour", "cpu_hour")
    metrics = cost_metrics({**gpu.to_dict(), "projected_tokens": 12, "projected_seconds": 1.5})
    assert metrics == {"cost/device_seconds": 3600.0, "cost/n_devices": 2.0, "cost/tokens": 10.0,
                       "cost/peak_memory_mb": 5.0, "cost/estimated": 3.0, "cost/projected_tokens": 12.0,
                       "cost/projected_seconds": 1.5}
    assert cost_metrics({}) == {}  # a result recorded before cost accounting


class WordTokenizer:
    """One token per whitespace word; the chat template joins ``role: content`` lines."""

    def apply_chat_template(self, messages, tokenize):
        assert tokenize is False
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)

    def __call__(self, text, add_special_tokens):
        return {"input_ids": text.split()}


def test_example_tokens_count_prompt_and_completion_capped_at_max_length() -> None:
    examples = [
        {"prompt": [{"role": "user", "content": "a b c"}], "completion": [{"role": "assistant", "content": "d e"}]},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
        {"prompt": "one two ", "completion": "three"},
        {"messages": [{"role": "user", "content": "w " * 50}]},
    ]
    assert example_token_counts(examples, WordTokenizer(), max_length=10) == [7, 4, 3, 10]


def test_the_cost_section_is_validated() -> None:
    assert load_params().cost.max_train_tokens is None and load_params().cost.max_train_seconds is None
    with pytest.raises(ConfigError, match="cost.rates"):
        params_with(cost={"rates": {"tpu_hour": 1.0}})
    with pytest.raises(ConfigError, match="cost.expected_tokens_per_second"):
        params_with(cost={"expected_tokens_per_second": {"cpu": 0}})
    with pytest.raises(ConfigError, match="cost.max_train_tokens"):
        params_with(cost={"max_train_tokens": 0})
