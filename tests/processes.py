"""Real `oqat` processes for the fault tests, driven by events, never by timing: with
OQAT_PAUSE_AT=<event> the process stops itself (SIGSTOP) on reaching that event (oqat.faults),
the test waits for the stop, acts (a signal, a full disk, a second process), then resumes it."""
import os
import signal
import subprocess
import sys

# A whole run in about 7 s: two 8-step stages (4 bits, then 2 by inheritance), a search of
# each bit-width, the S/M/L exports (not timed: half the run's time otherwise) and the report.
TINY_RUN = ["data.name=synthetic", "data.val_size=64", "data.synthetic_train=320", "data.synthetic_test=64",
            "data.batch_size=32", "data.eval_batch_size=64", "train.calib_images=32", "train.sandwich_random=1",
            "train.log_every=2", "train.checkpoint_every=2",
            "stages=[{bits: 4, epochs: 1}, {bits: 2, epochs: 1, lr: 0.05}]",
            "search.population=4", "search.generations=1", "search.val_images=64", "search.calib_images=32",
            "export.test_images=32", "export.speed_rounds=0"]


def start(run_dir, *args, command: str = "run", pause_at: str | None = None) -> subprocess.Popen:
    """`oqat COMMAND run.dir=RUN_DIR TINY_RUN... ARGS... --quiet`, its output in pipes (a few
    lines, no progress bars: they cannot fill while the process is stopped)."""
    exe = os.path.join(os.path.dirname(sys.executable), "oqat")
    env = {k: v for k, v in os.environ.items() if k != "OQAT_PAUSE_AT"}
    env.update(OMP_NUM_THREADS="1", **({"OQAT_PAUSE_AT": pause_at} if pause_at else {}))
    return subprocess.Popen([exe, command, f"run.dir={run_dir}", *TINY_RUN, *args, "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def paused(proc: subprocess.Popen) -> bool:
    """Wait until `proc` stops at its pause event (True) or ends (False, returncode set)."""
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        return True
    proc.returncode = os.waitstatus_to_exitcode(status)
    return False


def resume(proc: subprocess.Popen, sig: int | None = None) -> None:
    """Deliver `sig` (if any) to the stopped `proc`, then let it go on."""
    if sig is not None:
        os.kill(proc.pid, sig)
    os.kill(proc.pid, signal.SIGCONT)

