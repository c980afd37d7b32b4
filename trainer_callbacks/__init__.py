"""Callbacks for any ``transformers.Trainer`` or TRL trainer.

    from trainer_callbacks import ReselectCallback, SelectionHistoryCallback, NaturalnessLoggingCallback

``hf_localnat.ReselectingSFTTrainer`` is built on these; use them directly when you keep your own trainer.
"""

from .history import NaturalnessLoggingCallback, SelectionHistoryCallback
from .reselect import ReselectCallback, SelectionState

__all__ = ["NaturalnessLoggingCallback", "ReselectCallback", "SelectionHistoryCallback", "SelectionState"]
