"""Token-importance scorers behind one protocol (:class:`Scorer`)."""

from typing import Any

from tokenskip.scorers.base import Scorer
from tokenskip.scorers.cache import CachedScorer
from tokenskip.scorers.classifier import TokenClassifierScorer
from tokenskip.scorers.heuristic import HeuristicScorer
from tokenskip.scorers.self_info import QuestionAwareScorer, SelfInfoScorer
from tokenskip.tokens import TextTokenizer

__all__ = [
    "SCORER_NAMES",
    "CachedScorer",
    "HeuristicScorer",
    "QuestionAwareScorer",
    "Scorer",
    "SelfInfoScorer",
    "TokenClassifierScorer",
    "build_scorer",
]


SCORER_NAMES = ("heuristic", "self-info", "classifier")


def build_scorer(
    name: str,
    *,
    tokenizer: TextTokenizer,
    lm: Any = None,
    scorer_model: str | None = None,
    allow_download: bool = False,
) -> Scorer:
    """The scorer a user named (CLI flag, request field): the edge where names become objects.

    Args:
        name: one of :data:`SCORER_NAMES`.
        tokenizer: the target tokenizer (used by the heuristic scorer and by self-info).
        lm: the target causal LM, for ``self-info`` when ``scorer_model`` is not given.
        scorer_model: a different model to score with (required for ``classifier``).
    """
    from tokenskip.errors import InvalidInputError
    from tokenskip.models import load_model

    if name == "heuristic":
        return HeuristicScorer(tokenizer)
    if name == "self-info":
        if scorer_model is not None:
            loaded = load_model(scorer_model, allow_download=allow_download)
            return SelfInfoScorer(loaded.model, TextTokenizer(loaded.tokenizer, name=scorer_model))
        if lm is None:
            raise InvalidInputError("the self-info scorer needs a causal LM (pass --model)")
        return SelfInfoScorer(lm, tokenizer)
    if name == "classifier":
        if scorer_model is None:
            raise InvalidInputError(
                "the classifier scorer needs --scorer-model: a token-classification model "
                "directory or id (e.g. microsoft/llmlingua-2-xlm-roberta-large-meetingbank "
                "with --allow-download)"
            )
        return TokenClassifierScorer.from_pretrained(scorer_model, allow_download=allow_download)
    raise InvalidInputError(f"unknown scorer '{name}'; choose one of: {', '.join(SCORER_NAMES)}")
