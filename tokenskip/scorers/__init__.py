"""Token-importance scorers behind one protocol (:class:`Scorer`)."""

from tokenskip.scorers.base import Scorer
from tokenskip.scorers.classifier import TokenClassifierScorer
from tokenskip.scorers.heuristic import HeuristicScorer
from tokenskip.scorers.self_info import SelfInfoScorer

__all__ = ["HeuristicScorer", "Scorer", "SelfInfoScorer", "TokenClassifierScorer"]
