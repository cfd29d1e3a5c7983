"""The console of a run: the loop's own story once, progress that suits where the output goes, and the rest
only in the log files.

Without this, ``make demo > demo.log`` held every Lightning message twice (Lightning's own handler and
Hydra's), a litlogger advertisement per Trainer, library deprecation warnings, a "Saving the dataset" bar per
save and an "Epoch 0/-2" bar per fit (``max_epochs=-1``). :func:`setup_console` (called by ``train.py``
after Hydra has configured logging) routes Lightning's messages through Hydra's handlers only, sends Python
warnings through logging (so they reach Hydra's job log file), keeps known-harmless lines off the console
(:data:`HARMLESS`; still in the file), and turns off the Hugging Face progress bars of small chores.
:class:`StepProgress` is the training bar of every stage (a live bar in a terminal); when stderr is not a
terminal, :class:`ProgressLines` turns any live bar into one line every ``interval_s`` seconds plus its
final state.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from lightning.pytorch.callbacks import ProgressBar

#: Console lines that say nothing about the run (library housekeeping); they stay in the job's log file.
HARMLESS: tuple[re.Pattern[str], ...] = tuple(re.compile(p) for p in (
    r"litlogger|LitLogger|💡 Tip",                                 # Lightning's advertisement, once per Trainer
    r"^(GPU|TPU|HPU|IPU) available",                               # Lightning's device census, once per Trainer
    r"^`Trainer\.fit` stopped: `max_steps=\d+` reached",           # the expected end of every fit
    r"is deprecated|DeprecationWarning|FutureWarning",             # libraries' notes to their own developers
    r"You defined a `validation_step` but have no `val_dataloader`",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"Found \d+ module\(s\) in eval mode at the start of training",  # frozen towers are eval on purpose
    r"does not have many workers which may be a bottleneck",         # num_workers=0 is deliberate on CPU
))
#: Set before the Hugging Face libraries are imported: no bars for loading weights or saving a dataset.
QUIET_ENV = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "TOKENIZERS_PARALLELISM": "false"}


#: Loggers whose records only the log file gets (the config tree: ~250 lines).
FILE_ONLY_LOGGERS = ("medgr2.config",)


class ConsoleFilter(logging.Filter):
    """Drops :data:`HARMLESS` lines and :data:`FILE_ONLY_LOGGERS` from a console handler (file handlers keep
    everything)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in FILE_ONLY_LOGGERS:
            return False
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 (a broken record is shown as it is, not hidden)
            return True
        return record.levelno >= logging.ERROR or not any(p.search(msg) for p in HARMLESS)


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS message`` for information, ``HH:MM:SS WARNING logger: message`` for the rest."""

    def __init__(self) -> None:
        super().__init__(datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        when = self.formatTime(record, self.datefmt)
        msg = record.getMessage()
        if record.name == "py.warnings":  # "path:line: Category: text" -> the text
            msg = msg.strip().splitlines()[0] if msg.strip() else msg
        if record.levelno >= logging.WARNING:
            msg = f"{record.levelname} {record.name}: {msg}"
        if record.exc_info:
            msg = f"{msg}\n{self.formatException(record.exc_info)}"
        return f"{when} {msg}"


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (live bars) rather than a file or a pipe."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def quiet_environment() -> None:
    """Set :data:`QUIET_ENV` (without overriding what the user set); call before importing the HF libraries."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def setup_console(interval_s: float = 30.0) -> None:
    """Make the console tell the run's story once (see the module docstring). Idempotent."""
    quiet_environment()
    # The environment is read when these libraries are imported, which may already have happened.
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    logging.captureWarnings(True)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        # Lightning adds its own console handler when it is imported before logging is configured (it is,
        # here), so each message came twice; Hydra's handlers (console and job log file) get it once.
        for h in list(lg.handlers):
            if type(h) is logging.StreamHandler:
                lg.removeHandler(h)
        lg.propagate = True
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # the console, not a FileHandler (a subclass)
            if not any(isinstance(f, ConsoleFilter) for f in handler.filters):
                handler.addFilter(ConsoleFilter())
            handler.setFormatter(ConsoleFormatter())
    if not is_terminal(sys.stderr) and not isinstance(sys.stderr, ProgressLines):
        sys.stderr = ProgressLines(sys.stderr, interval_s)


class ProgressLines:
    """A text stream for output that is not a terminal: a live bar (text redrawn after ``\\r``) becomes one
    line every ``interval_s`` seconds plus its final state; everything else passes through unchanged.

    A bar that ends within ``interval_s`` of its start leaves a single line (its final state)."""

    def __init__(self, stream: TextIO, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self._stream, self._interval, self._clock = stream, float(interval_s), clock
        self._in_bar = False  # the current line is being redrawn
        self._pending = ""    # the bar's latest state
        self._last = ""       # the last state shown
        self._shown = -math.inf

    def _show(self, line: str) -> None:
        self._stream.write(line.rstrip() + "\n")
        self._stream.flush()
        self._last = line

    def write(self, text: str) -> int:
        for part in re.split(r"(\r|\n)", text):
            if part == "\r":
                if not self._in_bar:  # a new bar: its first line after interval_s
                    self._in_bar, self._shown, self._last = True, self._clock(), ""
                self._pending = ""
            elif part == "\n":
                if self._in_bar:
                    if self._pending.strip() and self._pending != self._last:
                        self._show(self._pending)
                    self._in_bar, self._pending = False, ""
                else:
                    self._stream.write("\n")
            elif part:
                if self._in_bar:
                    self._pending += part
                else:
                    self._stream.write(part)
        if self._in_bar and self._pending.strip() and self._clock() - self._shown >= self._interval:
            self._show(self._pending)
            self._shown = self._clock()
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, buffer… of the wrapped stream
        return getattr(self._stream, name)


class StepProgress(ProgressBar):
    """The training bar of every stage: ``<label>: step n/N`` with the loss, a live ``tqdm`` bar on stderr
    (one line per ``interval_s`` through :class:`ProgressLines` when stderr is not a terminal)."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label
        self._enabled = True
        self._bar: Any = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not self._enabled:
            return
        from tqdm.auto import tqdm

        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self._bar = tqdm(total=total, initial=trainer.global_step, desc=self.label, unit="step", leave=True,
                         dynamic_ncols=True, file=sys.stderr)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._bar is None:
            return
        self._bar.update(trainer.global_step - self._bar.n)
        loss = trainer.progress_bar_metrics.get("loss", trainer.callback_metrics.get("train/loss"))
        if loss is not None:
            self._bar.set_postfix_str(f"loss {float(loss):.4f}", refresh=False)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)


__all__ = ["FILE_ONLY_LOGGERS", "HARMLESS", "ConsoleFilter", "ConsoleFormatter", "ProgressLines", "StepProgress", "is_terminal",
           "quiet_environment", "setup_console"]
