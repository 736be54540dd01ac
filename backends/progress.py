"""Progress of long runs in logs: plain lines where no terminal shows progress bars.

Progress bars (rich, tqdm) draw nothing useful when stderr is a file or a pipe (CI,
``nohup``, a job scheduler's log). There, lazyllm prints a plain line instead, at most
every ``LAZYLLM_PROGRESS_INTERVAL`` seconds (default 10), so a log never stays silent
for minutes.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from lazyllm.core.errors import ParameterError

__all__ = ["stderr_is_terminal", "progress_interval", "training_progress_callback"]


def stderr_is_terminal() -> bool:
    """True when stderr is an interactive terminal (progress bars render there)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_interval() -> float:
    """Seconds between plain progress lines: ``LAZYLLM_PROGRESS_INTERVAL`` (default 10).

    Raises
    ------
    PlanError
        The variable is not a number.
    """
    raw = os.environ.get("LAZYLLM_PROGRESS_INTERVAL", "10")
    try:
        return max(float(raw), 0.0)
    except ValueError:
        raise ParameterError(f"LAZYLLM_PROGRESS_INTERVAL must be a number of seconds, got {raw!r}; "
                        "unset it or set it to, for example, 10.") from None


def training_progress_callback(label: str, *, interval: float | None = None, stream: Any = None) -> Any:
    """A ``transformers.TrainerCallback`` that prints one plain line per ``interval`` seconds:
    ``lazyllm train <label>: step 3/10 · loss 2.310 · 1.24 s/step · ETA 9 s`` (and one
    when training ends).

    Parameters
    ----------
    label : str
        What trains (for example ``"sft"``).
    interval : float, optional
        Seconds between lines (default :func:`progress_interval`).
    stream : file, optional
        Where lines go (default ``sys.stderr``).
    """
    from transformers import TrainerCallback  # deferred: transformers is heavy

    every = progress_interval() if interval is None else interval

    class _PlainTrainingProgress(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.start = self.last = 0.0
            self.first_step = 0
            self.loss: float | None = None

        def _print(self, state: Any, done: bool = False) -> None:
            now = time.perf_counter()
            steps = state.global_step - self.first_step
            per_step = (now - self.start) / steps if steps > 0 else 0.0
            line = f"lazyllm train {label}: step {state.global_step}/{state.max_steps}"
            if self.loss is not None:
                line += f" · loss {self.loss:.3f}"
            if steps > 0:
                line += f" · {per_step:.2f} s/step"
                line += " · done" if done else f" · ETA {(state.max_steps - state.global_step) * per_step:.0f} s"
            print(line, file=stream or sys.stderr, flush=True)
            self.last = now

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = self.last = time.perf_counter()
            self.first_step = state.global_step  # > 0 when resuming from a checkpoint
            self._print(state)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if time.perf_counter() - self.last >= every:
                self._print(state)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._print(state, done=True)

    return _PlainTrainingProgress()
