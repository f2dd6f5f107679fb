"""What oqat does when the machine misbehaves (docs/faults.md): stop signals, one writer
per run folder, and a pause point that lets tests reach a named moment without timing.
"""
import contextlib
import errno
import fcntl
import os
import signal
import tempfile
import threading

LOCK_FILE = ".oqat.lock"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def pause_point(event: str) -> None:
    """With OQAT_PAUSE_AT=<event>: print "[oqat] paused at <event>" and stop (SIGSTOP) each
    time the process reaches `event`, so a test waits for the stop (waitpid WUNTRACED), acts
    (a signal, a full disk, a second process) and sends SIGCONT: no race with a fast stage."""
    if os.environ.get("OQAT_PAUSE_AT") == event:
        print(f"[oqat] paused at {event}", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT. Unwinds like Ctrl-C, past `except Exception`; every file is
    written atomically, so what it leaves on disk is the last complete version of each."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name + (" (Ctrl-C)" if signum == signal.SIGINT else "")


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM (torchrun, schedulers) and SIGINT raise Stopped in the main thread; a second
    one ends the process at once, for a user who does not want to wait for the unwinding.
    The previous handlers come back afterwards (main() also runs inside tests). Only the
    main thread may set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        raise Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def check_output(path: str, option: str, folder: bool) -> None:
    """Refuse, before any work, an output path that cannot be written: a file where a folder
    (`folder`) is to go or a folder where a file is, a path under a file, a folder that takes
    no file (tried with an empty one, removed at once: the reason is the system's own)."""
    expected = "a folder (or a path to create one at)" if folder else "a file path (not a folder)"
    if os.path.exists(path) and os.path.isdir(path) != folder:
        raise ValueError(f"{option} '{path}' is a {'file' if folder else 'folder'}; expected {expected}")
    parent = os.path.abspath(path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    try:
        if not os.path.isdir(parent):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".oqat-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{option} '{path}' cannot be written: {err.strerror}") from None


@contextlib.contextmanager
def run_dir_lock(path: str):
    """Hold `path` (run.dir) as its one writer, refusing before any work a path that is a
    file, cannot be written, or is held by another `oqat run` / `oqat train`. The lock is an
    flock on LOCK_FILE, which the kernel drops when its process ends however it ends: a
    crashed run never leaves the folder locked. Under torchrun rank 0 holds it for its run."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    check_output(path, "run.dir", folder=True)
    lock = os.path.join(path, LOCK_FILE)
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        if not os.access(path, os.W_OK | os.X_OK):  # a lock file left writable in a folder that is not
            os.close(fd)
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as err:
        raise ValueError(f"run.dir '{path}' cannot be written: {err.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(f"run.dir '{path}' is in use by another oqat process (pid {holder}); "
                             "wait for it to end or use another run.dir") from None
        try:  # the holder's pid, for the message above; the lock itself is the flock
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as err:
            raise ValueError(f"run.dir '{path}' cannot be written: {err.strerror}") from None
        yield
    finally:
        os.close(fd)
