"""Is a path a network namespace? (open it and ask the kernel: ioctl NS_GET_NSTYPE == CLONE_NEWNET)."""

from __future__ import annotations

import errno
import fcntl
import os
from enum import Enum

NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h
CLONE_NEWNET = 0x40000000


class NetnsState(Enum):
    NETNS = "a network namespace"
    MISSING = "does not exist"
    OTHER_NAMESPACE = "is a namespace of another kind"
    NOT_A_NAMESPACE = "is not a namespace"
    UNREADABLE = "cannot be opened"


def netns_state(path: str) -> NetnsState:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return NetnsState.MISSING
    except OSError:
        return NetnsState.UNREADABLE
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as err:
        if err.errno in (errno.ENOTTY, errno.EINVAL):
            return NetnsState.NOT_A_NAMESPACE
        return NetnsState.UNREADABLE
    finally:
        os.close(fd)
    return NetnsState.NETNS if kind == CLONE_NEWNET else NetnsState.OTHER_NAMESPACE
