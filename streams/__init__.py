"""The stream processor: the pure task state machine (``domain``) and its Kafka wiring (``processor``)."""

from .domain import SubmitTask, decide, evolve, fold, is_ready, is_terminal, ready_message

__all__ = ["SubmitTask", "decide", "evolve", "fold", "is_ready", "is_terminal", "ready_message"]
