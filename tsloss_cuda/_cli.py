"""What the command-line tools share: argument types that name the argument in their errors, a
parser whose errors are one line, and one format for every message: ``PROG: error: ...``."""
from __future__ import annotations

import argparse
import errno
import math
import os
import sys
import tempfile
from typing import Callable, List, NoReturn, Tuple


class CLIError(Exception):
    """A user error: reported as one line, exit status 2."""


def first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def bounded(kind: Callable, low: float, high: float, what: str,
            strict: bool = False) -> Callable[[str], float]:
    """An argparse ``type=`` of ``kind`` (int or float) from ``low`` (excluded if ``strict``) to
    ``high``; ``what`` says the range in its errors."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if value < low or (strict and value == low) or value > high:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


#: argparse ``type=`` values; argparse prefixes their messages with ``argument --NAME:``.
positive_int = bounded(int, 0, math.inf, "an integer >= 1", strict=True)
nonneg_int = bounded(int, 0, math.inf, "an integer >= 0")
nonneg_float = bounded(float, 0.0, math.inf, "a number >= 0")


fraction = bounded(float, 0.0, 1.0, "a number in [0, 1]")
#: A ``--threads`` of at least one: far past any machine's cores, a count fails only inside a
#: library's pool (100000 was a segmentation fault in libgomp). The training CLI's bound too.
positive_threads = bounded(int, 0, 1024, "an integer in [1, 1024]", strict=True)


def missing_folders(path: str) -> Tuple[str, List[str]]:
    """The nearest of ``path`` (made absolute) and its parents that exists, and the ones below it
    that do not, deepest first: the folders ``os.makedirs(path)`` would have to create."""
    there, missing = os.path.abspath(path), []
    while not os.path.exists(there):
        missing.append(there)
        there = os.path.dirname(there)
    return there, missing


def check_writable(out: str, flag: str, longest: str = "", keep: bool = False) -> None:
    """Refuse (a :class:`CLIError` naming ``flag``) an output folder that cannot be created or
    written (a file among its parents, a read-only or virtual file system, no permission)
    before the work, rather than after it (minutes for the Gemma job). Tries both, then removes
    the folders it made. ``longest``: the longest path the tool writes, relative to ``out``; a
    folder so long that this path would pass the system's limit (PATH_MAX) is refused too.
    ``keep``: the folders made stay (a cache that ranks of one job test at once: one rank's
    removal raced another's write)."""
    _, missing = missing_folders(out)
    # Removed by the paths given, not the absolute ones: a relative path that fits the limit
    # may be made, and its absolute form be too long to remove.
    made, folder = [], os.path.normpath(out)
    for _ in missing:
        made.append(folder)
        folder = os.path.dirname(folder)
    step = "created"
    try:
        os.makedirs(out, exist_ok=True)
        step = "written"
        with tempfile.TemporaryFile(dir=out):
            pass
        if longest:  # TemporaryFile opens the folder (O_TMPFILE): no long name was tried
            _check_length(out, flag, longest)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise CLIError(f"{flag} is too long ({len(os.fsencode(out))} bytes): "
                           f"{e.strerror}") from None
        raise CLIError(f"{flag} {out} cannot be {step}: {e.strerror or e}") from None
    finally:
        for folder in made if not keep else ():  # deepest first; one another process filled stays
            try:
                os.rmdir(folder)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENAMETOOLONG):  # else never made
                    break


def _check_length(out: str, flag: str, longest: str) -> None:
    try:
        limit = os.pathconf(out, "PC_PATH_MAX")  # with the terminating NUL
    except (OSError, ValueError):  # not known here: the writes will tell
        return
    if limit <= 0:  # no limit
        return
    size = len(os.fsencode(os.path.join(out, longest)))
    if size >= limit:
        raise CLIError(f"{flag} is too long ({len(os.fsencode(out))} bytes): the files written "
                       f"in it would pass this system's path limit of {limit - 1} bytes "
                       f"({longest} in it: {size}); use a shorter folder")


#: The end of each tool's --device help.
DEVICE_HELP = "cpu, or cuda (needs a CUDA build of torch and of tsloss_cuda, and a visible GPU)"


def check_device(device: str) -> None:
    """Raise :class:`CLIError` naming ``--device`` when CUDA is asked for but not usable."""
    if device != "cuda":
        return
    import torch
    if torch.version.cuda is None:
        raise CLIError(f"--device cuda: this torch ({torch.__version__}) is a CPU-only build; "
                       "use --device cpu or install a CUDA build of torch")
    if not torch.cuda.is_available():
        raise CLIError("--device cuda: torch sees no CUDA device; use --device cpu")


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a CLI body; every error becomes one line ``PROG: error: ...`` and an exit status."""
    try:
        return body()
    except CLIError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        # Not foreseen as a user error, but still one line: the type says where it came from.
        print(f"{prog}: error: {first_line(exc)} ({type(exc).__name__})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted", file=sys.stderr)
        return 130
