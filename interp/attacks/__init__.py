"""Adversarial attacks on one token-search engine: subspace rerouting (probe, steering, attention) and GCG."""

from interp.attacks.engine import MASK, AttackPrompt, Candidate, EngineConfig, SearchResult, TokenSearch, build_prompt
from interp.attacks.losses import AttackLoss, AttentionLoss, GCGLoss, ProbeLoss, SteeringLoss
from interp.attacks.run import AttackConfig, Summary, attack, build_loss

__all__ = ["MASK", "AttackPrompt", "Candidate", "EngineConfig", "SearchResult", "TokenSearch", "build_prompt",
           "AttackLoss", "AttentionLoss", "GCGLoss", "ProbeLoss", "SteeringLoss", "AttackConfig", "Summary", "attack",
           "build_loss"]
