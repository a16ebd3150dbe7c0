"""Output files that are whole or absent: written under a hidden temporary name, then renamed
into place (``os.replace``), with Ctrl-C held back while a group of them goes in."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from typing import Callable, Iterator, List, Tuple


def partial_path(path: str) -> str:
    """The temporary name of ``path`` while it is written: hidden, beside it (so that
    ``os.replace`` renames it within one file system), this process's, and with the same
    extension (matplotlib's ``savefig`` takes the format from it), e.g.
    ``out/.summary.partial-1234.json``."""
    folder, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.partial-{os.getpid()}{ext}")


_PARTIAL = re.compile(r"^\..+\.partial-(\d+)(\.[^.]*)?$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: alive
        return True
    return True


def remove_leftovers(folder: str) -> List[str]:
    """Remove the :func:`partial_path` files in ``folder`` of processes no longer running: a job
    killed (SIGTERM, SIGKILL, out of memory) while it wrote leaves them, and no rename or later
    job would otherwise take them away. Returns the paths removed."""
    removed: List[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _PARTIAL.match(name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                _remove(path)
                removed.append(path)
    return removed


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to :func:`partial_path`, then rename it to ``path``: a reader, or a job
    stopped meanwhile, sees the earlier ``path`` or the new one whole, never a part."""
    tmp = partial_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


class PartialFiles:
    """Several files written under their :func:`partial_path` names first (the slow part, which
    may fail or be interrupted), then renamed into place by :meth:`put` (fast). Used as a
    context manager, it removes at its end the temporary files not put in place, so that an
    error or Ctrl-C before :meth:`put` leaves every earlier file as it was."""

    def __init__(self) -> None:
        self._pending: List[Tuple[str, str]] = []  # (temporary, final) not yet put in place

    def write(self, path: str, write: Callable[[str], object]) -> None:
        """``write(tmp)`` for ``path``'s temporary name ``tmp``, kept until :meth:`put`."""
        tmp = partial_path(path)
        self._pending.append((tmp, path))
        write(tmp)

    def pending(self) -> List[str]:
        """The final paths of the temporaries written and not yet put in place."""
        return [p for _, p in self._pending]

    def put(self, *paths: str) -> None:
        """Rename the temporaries of ``paths`` (all written ones if none are named) into
        place, in the order given (else written)."""
        want = list(paths) if paths else self.pending()
        for path in want:
            (tmp, _), = [e for e in self._pending if e[1] == path]
            os.replace(tmp, path)
            self._pending.remove((tmp, path))

    def discard(self) -> None:
        """Remove the temporaries not put in place."""
        while self._pending:
            _remove(self._pending.pop()[0])

    def __enter__(self) -> "PartialFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


@contextlib.contextmanager
def deferred_sigint() -> Iterator[None]:
    """Hold back SIGINT (Ctrl-C) during the block: a signal that comes meanwhile takes effect
    (KeyboardInterrupt, as the handler that was there says) once the block has finished, so a
    few renames that belong together are all done or none. Off the main thread, where Python
    cannot set a signal handler, it holds nothing back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: List[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        # None: a handler not set from Python; Python's own is the nearest to put back.
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None
                      else previous)
    if caught:  # as it would have come, now that the block is done
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)
        elif previous is None:
            raise KeyboardInterrupt
