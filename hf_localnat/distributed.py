"""Process-group housekeeping for multi-process runs (``accelerate launch``), and decisions made once for all."""

from __future__ import annotations

import atexit
from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

from .errors import LocalnatError

T = TypeVar("T")

_registered = False


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def destroy_process_group_at_exit() -> None:
    """Destroy the default process group when the interpreter exits, if it is still up.

    A gloo process group left alive at exit can end the process with ``terminate called without an active
    exception`` (SIGABRT) after all the work is done, which ``accelerate launch`` reports as a failed run.
    Calling this more than once registers one hook.

    Example:
        >>> destroy_process_group_at_exit()  # a no-op at exit when no process group was started
    """
    global _registered
    if not _registered:
        atexit.register(_destroy_process_group)
        _registered = True


def main_decides(state: Any, action: Callable[[], T]) -> T:
    """Run ``action`` on the main process only and hand its result to every process.

    A :class:`LocalnatError` there is raised on every process, so a launch stops together with one message
    instead of leaving the other processes waiting at a barrier; any other exception is re-raised on the main
    process and stops the others with a ``RuntimeError`` naming it. ``state`` is an accelerate ``PartialState``,
    or None for a single process.

    Example:
        >>> main_decides(None, lambda: 42)
        42
    """
    if state is None or state.num_processes == 1:
        return action()
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [None]
    failure: Exception | None = None
    if state.is_main_process:
        try:
            box = [("ok", action())]
        except LocalnatError as err:
            box = [("error", str(err))]
        except Exception as err:  # the others must not wait for a result that will never come
            failure, box = err, [("crash", f"{type(err).__name__}: {err}")]
    broadcast_object_list(box, from_process=0)
    kind, value = box[0]
    if failure is not None:
        raise failure
    if kind == "error":
        raise LocalnatError(value)
    if kind == "crash":
        raise RuntimeError(f"the main process failed ({value}); see its traceback")
    return value
