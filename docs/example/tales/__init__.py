"""tales: a small storytelling service, the example downstream project of pytest-resilience."""

from tales.service import RESTING, Storyteller

__all__ = ["RESTING", "Storyteller"]
