"""Reasoning budgets: provider kinds, budgets as each provider takes them, budget forcing."""

import pytest

from tokenskip.reasoning import (
    DEFAULT_CUE,
    BudgetError,
    BudgetForcing,
    applied_budget,
    budget_for,
    client_controls,
    effort_for,
    infer_kind,
    native_fields,
)


@pytest.mark.parametrize(
    "model, kind",
    [
        ("anthropic/claude-sonnet-4-5-20250929", "anthropic"),
        ("bedrock/us.anthropic.claude-3-7-sonnet", "anthropic"),
        ("vertex_ai/claude-sonnet-4", "anthropic"),
        ("openrouter/some-claude-finetune", "none"),
        ("bedrock/claude-3-7-sonnet", "anthropic"),
        ("claude-opus-4", "anthropic"),
        ("gemini/gemini-2.5-flash", "gemini"),
        ("vertex_ai/gemini-2.5-pro", "gemini"),
        ("openai/o3-mini", "openai"),
        ("openai/gpt-5-nano", "openai"),
        ("openai/gpt-4o-mini", "none"),
        ("openai/o1-mini", "none"),  # takes no reasoning_effort
        ("anthropic/claude-3-5-sonnet-20241022", "none"),  # no extended thinking
        ("gemini/gemini-2.0-flash", "none"),  # no thinking budget
        ("hosted_vllm/Qwen/Qwen3-8B", "qwen3"),
        ("openai/qwen3-32b", "qwen3"),
        ("hosted_vllm/meta-llama/Llama-3.1-8B", "none"),
        ("", "none"),
        (None, "none"),
    ],
)
def test_kind_is_inferred_only_where_the_model_string_is_unambiguous(model, kind):
    assert infer_kind(model) == kind


def test_budget_is_the_explicit_one_else_ratio_times_reference():
    assert budget_for(0.5, None, 4096) == 2048
    assert budget_for(0.5, 700, 4096) == 700
    assert budget_for(None, None, 4096) is None
    assert budget_for(0.0001, None, 300) == 1


def test_openai_effort_follows_litellms_budget_table():
    assert effort_for(5000) == "high"
    assert effort_for(4096) == "high"
    assert effort_for(2048) == "medium"
    assert effort_for(1500) == "low"
    assert effort_for(300, "openai/o3") == "low"
    assert effort_for(300, "openai/gpt-5-mini") == "minimal"


def test_each_kind_gets_its_own_fields():
    assert native_fields("openai", 2048, "o3") == {"reasoning_effort": "medium"}
    assert native_fields("anthropic", 1500) == {
        "thinking": {"type": "enabled", "budget_tokens": 1500}
    }
    assert native_fields("gemini", 700, "gemini/gemini-2.5-flash") == {
        "thinking": {"type": "enabled", "budget_tokens": 700}
    }
    # Gemini 3 takes levels: litellm drops a thinking budget there, so an effort is sent
    assert native_fields("gemini", 700, "gemini/gemini-3-pro-preview") == {
        "reasoning_effort": "low"
    }
    assert native_fields("qwen3", 512) == {
        "chat_template_kwargs": {"enable_thinking": True, "thinking_budget": 512},
        "thinking_token_budget": 512,
    }
    with pytest.raises(ValueError, match="unknown reasoning kind"):
        native_fields("none", 100)


def test_a_budget_below_the_providers_floor_is_clamped_or_refused():
    assert applied_budget("anthropic", 300, clamp=True, max_tokens=None) == 1024
    with pytest.raises(BudgetError, match="minimum reasoning budget of 1024"):
        applied_budget("anthropic", 300, clamp=False, max_tokens=None)
    assert applied_budget("gemini", 50, clamp=True, max_tokens=None) == 128
    assert applied_budget("qwen3", 50, clamp=False, max_tokens=None) == 50


def test_anthropic_budget_stays_below_max_tokens():
    assert applied_budget("anthropic", 3000, clamp=True, max_tokens=2000) == 1999
    with pytest.raises(BudgetError, match="needs max_tokens above it"):
        applied_budget("anthropic", 3000, clamp=True, max_tokens=900)
    with pytest.raises(BudgetError):
        applied_budget("anthropic", 3000, clamp=False, max_tokens=2000)


def test_a_client_that_sets_the_reasoning_itself_is_seen():
    assert client_controls("openai", {"reasoning_effort": "high"}) == "reasoning_effort"
    assert client_controls("anthropic", {"thinking": {"type": "enabled"}}) == "thinking"
    assert client_controls("qwen3", {"extra_body": {"thinking_token_budget": 5}})
    assert client_controls("qwen3", {"chat_template_kwargs": {"thinking_budget": 5}})
    # a client that turns thinking on or off itself is left alone
    assert client_controls("qwen3", {"chat_template_kwargs": {"enable_thinking": False}})
    assert client_controls("qwen3", {"extra_body": "not a mapping"}) is None
    assert client_controls("openai", {"temperature": 0}) is None


def test_budget_forcing_settings_are_checked():
    f = BudgetForcing(64)
    assert f.cue == DEFAULT_CUE and f.answer_tokens > 0
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="budget"):
            BudgetForcing(bad)
    with pytest.raises(ValueError, match="answer_tokens"):
        BudgetForcing(10, answer_tokens=0)
    with pytest.raises(ValueError, match="cue"):
        BudgetForcing(10, cue="  ")


def test_an_answer_is_recognised_in_the_models_own_forms():
    # a whole answer: something follows its value (the text is cut at the budget)
    assert BudgetForcing.answered("so 3 + 4 = 7\n#### 7\n")
    assert BudgetForcing.answered("The answer is 7.\n")
    assert BudgetForcing.answered("thus \\boxed{7}")
    assert BudgetForcing.answered("step 1" + DEFAULT_CUE + " 7\n")
    assert not BudgetForcing.answered("First, 3 + 4 = 7. Then we")


@pytest.mark.parametrize(
    ("text", "answered"),
    [
        ("so 6 * 7 = 42.\nThe answer is 42.\n", True),
        ("#### 1,250\n", True),
        ("Final answer: 18 dollars", True),
        ("so \\boxed{42} is it", True),
        ("The answer is yes, since", True),
        # cut off mid-way at the budget: no answer yet, the cue goes in
        ("so 6 * 7 = 42.\nThe answer is 4", False),
        ("#### 1,2", False),
        ("The answer is 3.", False),
        ("so \\boxed{4", False),
        ("The answer is", False),
        ("#### ", False),
        ("6 * 7 = 42 so we are done", False),
    ],
)
def test_an_answer_cut_off_at_the_budget_is_not_answered(text, answered):
    assert BudgetForcing.answered(text) is answered
