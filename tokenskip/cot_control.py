"""The CoT knob: ask a model for reasoning compressed to about γ of its usual length.

A TokenSkip-tuned model gets the ratio in its trained prompt format (question + DELIM + γ +
DELIM). Any other model gets a concise-reasoning instruction with a token budget of
γ × its typical reasoning length; the TokenSkip paper measured that prompting alone barely
shortens output (actual ratios 0.94-0.97), so the response always says which method ran.
"""

from __future__ import annotations

from typing import Any, Literal

from tokenskip.ratio_prompt import ratio_suffix

CotMethod = Literal["tokenskip", "instruction", "none"]

INSTRUCTION = (
    "Reason step by step, but concisely: use at most {budget} tokens of reasoning, drop filler "
    "words and repetition, keep every number and equation you need, then state the final answer."
)


def apply_cot_ratio(
    messages: list[dict[str, Any]],
    ratio: float,
    *,
    delimiter: str | None,
    reference_tokens: int,
) -> tuple[list[dict[str, Any]], CotMethod]:
    """Messages with the knob applied, and which method it used.

    Args:
        delimiter: the model's TokenSkip delimiter, or None for a model not tuned for it.
        reference_tokens: the model's typical reasoning length at γ = 1.
    """
    messages = [dict(m) for m in messages]
    if delimiter is not None:
        last_user = max(
            (i for i, m in enumerate(messages) if m.get("role") == "user"), default=None
        )
        if last_user is None or not isinstance(messages[last_user].get("content"), str):
            return messages, "none"
        messages[last_user]["content"] += ratio_suffix(ratio, delimiter)
        return messages, "tokenskip"
    if ratio >= 1.0:
        return messages, "none"
    instruction = INSTRUCTION.format(budget=max(16, round(ratio * reference_tokens)))
    if (
        messages
        and messages[0].get("role") in ("system", "developer")
        and isinstance(messages[0].get("content"), str)
    ):
        messages[0]["content"] = f"{messages[0]['content']}\n\n{instruction}"
    else:
        messages.insert(0, {"role": "system", "content": instruction})
    return messages, "instruction"
