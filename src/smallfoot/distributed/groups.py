"""Helpers of both launchers (data-parallel and partition-wise): ``quiet_agent`` mutes the
elastic agent's log lines; ``end_process_group`` ends a process group without the gloo
shutdown deadlock.

A gloo process group's C++ destructor joins its worker threads while the caller holds the GIL.
A worker that has just finished a collective whose tensors came from Python
(``all_gather_object``, a DDP communication hook's buffers) needs the GIL to release them, so
when the last reference to the group dies right after such a collective (the
``DistributedDataParallel`` wrapper going out of scope after ``destroy_process_group``) the two
threads wait on each other forever. Seen here: one rank of a finished run never exited, more
often on a loaded machine. Keeping the ended group's object until the interpreter exits moves
the join to interpreter shutdown, where a worker thread asking for the GIL is stopped instead
of waiting. Before that, a short sleep (which releases the GIL) lets a worker still releasing
the last collective finish now rather than at interpreter shutdown.
"""

import contextlib
import logging
import os
import time
from collections.abc import Iterator

import torch.distributed as dist

_ENDED_GROUPS: list[dist.ProcessGroup] = []


def end_process_group() -> None:
    """Destroy the default process group (as ``dist.destroy_process_group()``); its threads and
    sockets are released when the interpreter exits (see the module's docstring for why)."""
    group = dist.group.WORLD
    time.sleep(0.05)
    dist.destroy_process_group()
    if group is not None:
        _ENDED_GROUPS.append(group)


@contextlib.contextmanager
def quiet_agent() -> Iterator[None]:
    """Mute the elastic agent's own log lines (a worker's traceback, "closing signal SIGTERM")
    so that a failure or an interruption reads as the launcher's one line; ``LOGLEVEL`` set in the environment
    (torch's own switch) keeps them."""
    if "LOGLEVEL" in os.environ:
        yield
        return
    names = [
        name
        for name in logging.root.manager.loggerDict
        if name.startswith(("torch.distributed.elastic", "torch.multiprocessing"))
    ]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
