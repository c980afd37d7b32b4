"""Process-group housekeeping for multi-process CPU runs (``accelerate launch`` with gloo)."""

from __future__ import annotations

import atexit

import torch.distributed as dist

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
