"""Stopping is part of running: SIGTERM (what Docker, Kubernetes, systemd and `ray job stop` send) and SIGINT
(Ctrl-C) end a command cleanly, within a bounded time, and leave no process of it behind.

`StopSignals` (entered by `estuary.cli.main`) turns the first signal into `Interrupted` in the main thread, a
KeyboardInterrupt, so the commands' own cleanup runs as for Ctrl-C: the run folder is marked interrupted, the
client pool, the Serve application and the local Ray cluster the command started are shut down (finally
blocks). The command then prints one line (`Interrupted.line`, set by the command) and exits with 128 + the
signal's number: 143 for SIGTERM, 130 for SIGINT. A second signal, or a cleanup still running after
ESTUARY_STOP_TIMEOUT_S seconds (default 30), forces the exit: every process this one started (the local Ray
cluster's, listed recursively first) is killed, then the process exits at once with the same code. A stopped
`estuary` command also leaves without the interpreter's teardown (`exit_now`), which takes seconds.

`ray.init` installs Ray's own SIGTERM handler (`sys.exit(15)`) and, once connected, Ray's C++ failure-signal
handler (a stack dump, then an abort that leaves the cluster's agents orphaned): `ensure_ray` runs it inside
`around_ray_init()`, which puts ours back, and the CLI keeps the C++ one out (`keep_ray_handler_out()`). SIGINT is
handled even where it came in ignored (a shell starts background jobs that way, and children inherit it:
`estuary serve ... &` from a script).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from types import FrameType, TracebackType
from typing import Any, NoReturn

HANDLED = (signal.SIGTERM, signal.SIGINT)
TIMEOUT_ENV = "ESTUARY_STOP_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 30.0
RAY_HANDLER_ENV = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"


class Interrupted(KeyboardInterrupt):
    """A stop signal, raised in the main thread. A KeyboardInterrupt, so every path that handles Ctrl-C handles
    it; `line` is what the command prints once it has stopped (empty: a generic line)."""

    def __init__(self, signum: int, line: str = "") -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.line = line

    @property
    def signame(self) -> str:
        return signal.Signals(self.signum).name


def _received() -> int | None:
    return _active.received if _active is not None else None


def signal_name(exc: BaseException) -> str:
    """SIGTERM, SIGINT, ... Ray turns any KeyboardInterrupt raised while it waits (ray.get, ray.wait) into a plain
    one, so the signal StopSignals received counts first; a plain KeyboardInterrupt otherwise is Ctrl-C."""
    if isinstance(exc, Interrupted):
        return exc.signame
    return signal.Signals(_received() or signal.SIGINT).name


def exit_code(exc: BaseException) -> int:
    """128 + the signal's number, as a shell reports a process ended by it: 143 (SIGTERM), 130 (SIGINT)."""
    return 128 + int(signal.Signals[signal_name(exc)])


def set_stop_line(exc: BaseException, line: str) -> None:
    """What the command prints once it has stopped (estuary.cli.main prints it)."""
    if isinstance(exc, Interrupted):
        exc.line = line
    if _active is not None:
        _active.line = line


def stop_line(exc: BaseException) -> str:
    """The one line a command prints when a signal stopped it."""
    line = exc.line if isinstance(exc, Interrupted) else ""
    return line or (_active.line if _active is not None else "") or f"{signal_name(exc)}: stopped"


def timeout_from_env(environ: Mapping[str, str] | None = None) -> float:
    """ESTUARY_STOP_TIMEOUT_S of `environ` (default: this process's), else 30."""
    raw = (os.environ if environ is None else environ).get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


def _alive(proc: Any) -> bool:
    import psutil

    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def descendants(also: list[Any] | None = None) -> list[Any]:
    """Every live process started by this one, recursively, and those of `also` (psutil.Process objects, listed
    earlier) still alive: a process whose parent was ended first is no longer a descendant (the dashboard's
    forkserver after `ray.shutdown`, Ray's agents after their raylet) but is still the command's."""
    import psutil

    try:
        found = psutil.Process().children(recursive=True)
    except psutil.Error:
        found = []
    found += [p for p in also or [] if p not in found]  # psutil.Process: the same pid and start time
    return [p for p in found if _alive(p)]


def reap_descendants(grace_s: float = 3.0, also: list[Any] | None = None) -> int:
    """End what is left of the processes this one started (see `descendants`): SIGTERM, then SIGKILL after
    `grace_s` (at once if 0). Returns how many are still alive."""
    import psutil

    procs = descendants(also)
    steps = ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)) if grace_s > 0 else ((signal.SIGKILL, 2.0),)
    for sig, wait_s in steps:
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        _, procs = psutil.wait_procs(procs, timeout=wait_s)
        if not procs:
            break
    return len(descendants(also))


class StopSignals:
    """Handle SIGTERM and SIGINT in the main thread for the duration of a command (see the module's doc)."""

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = timeout_s if timeout_s is not None else timeout_from_env()
        self.received: int | None = None
        self.line = ""  # the command's line for the stop (set_stop_line)
        self.started: list[Any] = []  # the processes this one had started when the first signal came
        self._previous: dict[int, Any] = {}
        self._timer: threading.Timer | None = None

    def __enter__(self) -> StopSignals:
        global _active
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.getsignal(sig)
            self.install()
            _active = self
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        global _active
        if self.received is not None:  # stopping: what the cleanup left of this process's children goes too
            self.install()  # a second signal meanwhile still forces the exit
            reap_descendants(also=self.started)
        if self._timer is not None:
            self._timer.cancel()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        if _active is self:
            _active = None

    def install(self) -> None:
        """(Re)install the handlers: after `ray.init` (see `around_ray_init`) and `ray.shutdown` (`reinstall`)."""
        for sig in HANDLED:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            self.force(f"second {signal.Signals(signum).name} while stopping")
        self.interrupt(signum)

    def interrupt(self, signum: int) -> NoReturn:
        """The first signal: start the clock on the cleanup and raise `Interrupted` here (the main thread)."""
        self.received = int(signum)
        self.started = descendants()
        self._timer = threading.Timer(
            self.timeout_s, self.force, args=(f"still stopping after {self.timeout_s:g} s",)
        )
        self._timer.daemon = True
        self._timer.start()
        raise Interrupted(signum)

    def force(self, why: str) -> NoReturn:
        """Exit now: kill every process this one started, then leave without cleanup (os._exit)."""
        code = 128 + (self.received or int(signal.SIGTERM))
        with contextlib.suppress(OSError):
            os.write(2, f"{why}: forcing the exit (killing the processes this one started)\n".encode())
        with contextlib.suppress(Exception):
            reap_descendants(grace_s=0.0, also=self.started)
        os._exit(code)


_active: StopSignals | None = None


def exit_now(code: int) -> NoReturn:
    """Leave at once, once a stopped command has cleaned up: the interpreter's teardown with torch and Ray loaded
    took 5 to 15 s on 2 busy cores, past a supervisor's grace period (Docker's is 10 s)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


@contextlib.contextmanager
def around_ray_init() -> Iterator[None]:
    """Run `ray.init` inside: our handlers are put back after it; a SIGTERM that arrived during it (Ray's handler
    raised SystemExit(15)) becomes `Interrupted` after the half-started cluster is shut down."""
    try:
        yield
    except SystemExit as exc:
        stop = _active
        if stop is None or exc.code != signal.SIGTERM:
            raise
        import ray

        with contextlib.suppress(Exception):
            ray.shutdown()
        stop.install()
        stop.interrupt(signal.SIGTERM)
    reinstall()


def keep_ray_handler_out() -> None:
    """Before `ray` is imported (Ray reads it then): no C++ failure-signal handler in this process and the Ray
    processes it starts (RAY_DISABLE_FAILURE_SIGNAL_HANDLER=1, unless set; 0 keeps Ray's C++ crash stack dumps).
    It took SIGTERM over (a stack dump, then an abort), and its uninstall in `ray.shutdown` set SIGTERM to the
    default action in C for the second or so spent stopping the local cluster: a second SIGTERM then ended the
    process on the spot (exit -15, without the line or the final reap)."""
    os.environ.setdefault(RAY_HANDLER_ENV, "1")


def reinstall() -> None:
    """Put the handlers of the running command back: `ray.init` replaces the SIGTERM handler with Ray's, and
    `ray.shutdown` resets SIGTERM to the default action in C (Python still reports our handler), so a later
    SIGTERM, a second one included, would end the process on the spot, without the line or the final reap."""
    if _active is not None and threading.current_thread() is threading.main_thread():
        _active.install()
