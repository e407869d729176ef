"""The supervisor: forks one worker process per shard and keeps them running.

Theory of operation (after gunicorn's arbiter). The supervisor binds every
listening socket once (``sockets.listening_sockets``) and keeps them open for
its whole life, then forks one child per worker id. A child closes what is
not its own (the other workers' sockets and pipes), puts the signal handlers
back to their defaults (Python's, so SIGINT still raises
KeyboardInterrupt), optionally pins itself to one CPU, and calls
``worker_main(ctx)``; its return value is the process exit status. No MQTT
ever flows through the supervisor: it only watches processes.

The parent's signal handlers do one thing: write the signal number to a
non-blocking self-pipe. The main loop ``select``s on that pipe and on one
heartbeat pipe per worker, then dispatches each queued signal to
``handle_<name>`` (``handle_term``, ``handle_hup`` ...), reaps children with
``waitpid(WNOHANG)``, checks heartbeats and restarts what is due. Nothing
else ever runs inside a signal handler, and signals are blocked around
``fork`` so a child cannot run the parent's handler before it resets it.

A worker calls ``ctx.heartbeat()`` from inside its event loop (a timer every
second or so), so a beat proves the loop turns, not merely that the process
exists. A worker silent for ``heartbeat_timeout`` gets SIGTERM, then SIGKILL
``KILL_GRACE`` seconds later, and is restarted.

Exits: a worker that dies on its own is restarted with the same worker id and
the same inherited sockets (so the kernel's accept queue survives), after a
delay that starts at ``BACKOFF_MIN`` and doubles up to ``backoff_max``; the
delay resets once a worker has lived ``BACKOFF_RESET`` seconds. ``EXIT_CONFIG``
and ``EXIT_BOOT`` mean restarting cannot help: the supervisor stops the other
workers and returns that code. An exception escaping ``worker_main`` is
logged with its traceback; before the worker's first heartbeat it means
EXIT_BOOT (it never served; a restart would fail the same way), after it
EXIT_CRASH, which is restarted. SIGTERM or SIGINT stops gracefully: SIGTERM to
every worker, SIGKILL to those still alive after ``shutdown_timeout``.

If the supervisor itself dies (SIGKILL), a worker's next heartbeat finds the
pipe's read end gone and the worker sends itself SIGTERM, so no orphan keeps
serving.
"""

from __future__ import annotations

import logging
import math
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .sockets import listening_sockets

__all__ = [
    "EXIT_BOOT",
    "EXIT_CONFIG",
    "EXIT_CRASH",
    "EXIT_OK",
    "Supervisor",
    "WorkerContext",
    "describe_exit",
    "resolve_workers",
]

log = logging.getLogger("shardmq.supervisor")

#: Worker exit statuses. EXIT_CONFIG and EXIT_BOOT stop the supervisor with
#: that status instead of respawning the worker in a loop.
EXIT_OK = 0
EXIT_CRASH = 1  # an exception after the worker's first heartbeat: restart it
EXIT_CONFIG = 3
EXIT_BOOT = 4
FATAL_EXITS = frozenset({EXIT_CONFIG, EXIT_BOOT})
_EXIT_NAMES = {
    EXIT_OK: "ok",
    EXIT_CRASH: "crash",
    EXIT_CONFIG: "config error",
    EXIT_BOOT: "boot error",
}

#: First restart delay (seconds); it doubles on each quick death up to backoff_max.
BACKOFF_MIN = 0.1
#: A worker that lived this long (seconds) restarts after BACKOFF_MIN again.
BACKOFF_RESET = 10.0
#: Seconds between the SIGTERM and the SIGKILL sent to a worker whose loop is stuck.
KILL_GRACE = 2.0
#: Longest select() wait, so a lost wake-up costs at most this much.
MAX_WAIT = 1.0

#: Signals the supervisor handles; children put them back to SIG_DFL. SIGPIPE
#: stays ignored, as Python leaves it, so a closed peer is an EPIPE error.
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
#: Python's own default for SIGINT (KeyboardInterrupt), not SIG_DFL: Ctrl-C
#: reaches the whole process group and a worker should unwind, not vanish.
_CHILD_HANDLERS = {signal.SIGINT: signal.default_int_handler}


def resolve_workers(value: str | int) -> int:
    """The worker count: ``"auto"`` is one per CPU this process may run on.

    Accepts an int or a decimal string, at least 1. Raises ``ValueError``.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return len(os.sched_getaffinity(0))
        try:
            value = int(text, 10)
        except ValueError:
            raise ValueError(f"expected an integer or 'auto', got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer or 'auto', got {value!r}")
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def describe_exit(status: int) -> str:
    """A waitpid status in words: "exited with code 3 (config error)", "killed by SIGKILL"."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            signame = signal.Signals(-code).name
        except ValueError:
            signame = f"signal {-code}"
        return f"killed by {signame}"
    meaning = _EXIT_NAMES.get(code)
    return f"exited with code {code}" + (f" ({meaning})" if meaning else "")


class WorkerContext:
    """What a worker process gets from the supervisor.

    ``sockets`` are this worker's listeners, in the order of the supervisor's
    addresses; ``run_dir`` is a private directory (created by the supervisor,
    removed when it exits) for the fabric's Unix sockets; ``generation`` counts
    the starts of this worker id, 1 for the first.
    """

    __slots__ = ("worker_id", "workers", "sockets", "run_dir", "generation", "_fd", "_beats")

    def __init__(
        self,
        worker_id: int,
        workers: int,
        sockets: list[socket.socket],
        run_dir: str,
        generation: int,
        heartbeat_fd: int,
    ) -> None:
        self.worker_id = worker_id
        self.workers = workers
        self.sockets = sockets
        self.run_dir = run_dir
        self.generation = generation
        self._fd = heartbeat_fd
        self._beats = 0

    def heartbeat(self) -> None:
        """Tell the supervisor the event loop turns. Call it from a loop timer.

        Never blocks: if the pipe is full the supervisor is behind and has
        beats to read anyway. If the supervisor is gone (the pipe has no
        reader) the worker sends itself SIGTERM and shuts down as if asked to.
        """
        self._beats += 1
        try:
            os.write(self._fd, b".")
        except BlockingIOError:
            pass
        except BrokenPipeError:
            os.kill(os.getpid(), signal.SIGTERM)

    @property
    def booted(self) -> bool:
        """Whether the worker has sent a heartbeat (its loop ran at least once)."""
        return self._beats > 0


class _Slot:
    """The supervisor's record of one worker id across its restarts."""

    __slots__ = (
        "worker_id",
        "pid",
        "generation",
        "hb_fd",
        "started_at",
        "last_beat",
        "kill_at",
        "stuck",
        "delay",
        "respawn_at",
    )

    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id
        self.pid: int | None = None
        self.generation = 0
        self.hb_fd: int | None = None  # read end of the heartbeat pipe
        self.started_at = 0.0
        self.last_beat = 0.0
        self.kill_at: float | None = None  # SIGKILL due (stuck loop after SIGTERM)
        self.stuck = False
        self.delay = BACKOFF_MIN  # the next restart delay
        self.respawn_at: float | None = None


class Supervisor:
    """Forks ``workers`` processes running ``worker_main`` and keeps them alive.

    The listening sockets are bound here, so ``ports`` (one per address, port
    0 resolved) is known before ``run``. Call ``run`` once; it blocks until
    SIGTERM/SIGINT or a fatal worker exit and returns the exit status. If
    ``run`` is never called, call ``close`` to release the sockets.

    ``run`` installs signal handlers, so it must be called from the main
    thread, and it reaps with ``waitpid(-1)``: the supervisor's process should
    have no children other than its workers.
    """

    def __init__(
        self,
        workers: int,
        addresses: list[tuple[str, int]],
        worker_main: Callable[[WorkerContext], int],
        *,
        pin: bool = False,
        heartbeat_timeout: float = 10.0,
        shutdown_timeout: float = 10.0,
        backoff_max: float = 5.0,
    ) -> None:
        workers = resolve_workers(workers)
        for name, value in (
            ("heartbeat_timeout", heartbeat_timeout),
            ("shutdown_timeout", shutdown_timeout),
            ("backoff_max", backoff_max),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number above 0, got {value!r}")
        if not addresses:
            raise ValueError("at least one address is needed")
        self.workers = workers
        self.worker_main = worker_main
        self.pin = pin
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.shutdown_timeout = float(shutdown_timeout)
        self.backoff_max = float(backoff_max)
        self._sockets = listening_sockets(addresses, workers)
        self.ports: list[int] = [sock.getsockname()[1] for sock in self._sockets[0]]
        self.run_dir: str | None = None
        self._slots = [_Slot(worker_id) for worker_id in range(workers)]
        self._by_pid: dict[int, _Slot] = {}
        self._wake_r = -1
        self._wake_w = -1
        self._signals: list[int] = []
        self._exit_code: int | None = None
        self._stopping = False
        self._closed = False

    # -- public ------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them; returns the exit status."""
        if self._closed:
            raise RuntimeError("Supervisor.run() can be called only once")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        previous: dict[signal.Signals, Any] = {}
        try:
            self.run_dir = tempfile.mkdtemp(prefix="shardmq-")
            for sig in SIGNALS:  # raises ValueError outside the main thread
                previous[sig] = signal.signal(sig, self._enqueue)
            log.info(
                "supervisor (pid %d) starting %d workers on port(s) %s",
                os.getpid(),
                self.workers,
                ", ".join(map(str, self.ports)),
            )
            for slot in self._slots:
                self._spawn(slot)
            while self._exit_code is None:
                self._wait(self._next_timeout())
                self._dispatch()
                self._reap()
                if self._exit_code is None:
                    self._check_heartbeats()
                    self._respawn_due()
            self._stop_workers()
            log.info("supervisor (pid %d) exiting with status %d", os.getpid(), self._exit_code)
            return self._exit_code
        finally:
            # Only the parent gets here: a child always leaves through os._exit.
            self._kill_leftovers()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.close()

    def close(self) -> None:
        """Release the sockets, pipes and run_dir (done by ``run`` on its way out)."""
        self._closed = True
        for group in self._sockets:
            for sock in group:
                sock.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        for slot in self._slots:
            self._close_heartbeat(slot)
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # -- signals: the handler only enqueues ------------------------------------------

    def _enqueue(self, signum: int, frame: object) -> None:
        try:
            os.write(self._wake_w, bytes([signum]))
        except OSError:
            pass  # pipe full: the loop is awake already; SIGCHLD is also polled

    def _dispatch(self) -> None:
        signals, self._signals = self._signals, []
        for signum in dict.fromkeys(signals):  # once each, in arrival order
            name = signal.Signals(signum).name
            handler = getattr(self, "handle_" + name[3:].lower(), None)
            if handler is not None:
                handler()

    def handle_term(self) -> None:
        log.info("supervisor: SIGTERM received, stopping workers")
        self._exit_code = EXIT_OK

    def handle_int(self) -> None:
        log.info("supervisor: SIGINT received, stopping workers")
        self._exit_code = EXIT_OK

    def handle_hup(self) -> None:
        log.info("supervisor: SIGHUP received, forwarding to workers")
        for slot in self._alive():
            self._kill(slot, signal.SIGHUP)

    def handle_chld(self) -> None:
        self._reap()

    # -- the main loop's steps ---------------------------------------------------------

    def _wait(self, timeout: float) -> None:
        """Sleep until a signal, a heartbeat or ``timeout``; read what arrived."""
        by_fd = {slot.hb_fd: slot for slot in self._slots if slot.hb_fd is not None}
        try:
            ready, _, _ = select.select([self._wake_r, *by_fd], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries select
            return
        now = time.monotonic()
        for fd in ready:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                continue
            if fd == self._wake_r:
                self._signals.extend(data)
                continue
            slot = by_fd[fd]
            if data:
                slot.last_beat = now
            else:  # the worker closed its end (it is exiting); stop watching
                self._close_heartbeat(slot)

    def _next_timeout(self) -> float:
        now = time.monotonic()
        due = now + MAX_WAIT
        for slot in self._slots:
            if slot.pid is None:
                if slot.respawn_at is not None:
                    due = min(due, slot.respawn_at)
            elif slot.kill_at is not None:
                due = min(due, slot.kill_at)
            elif not slot.stuck:
                due = min(due, slot.last_beat + self.heartbeat_timeout)
        return max(0.0, due - now)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = self._by_pid.pop(pid, None)
            if slot is not None:
                self._exited(slot, pid, status)

    def _exited(self, slot: _Slot, pid: int, status: int) -> None:
        now = time.monotonic()
        why = describe_exit(status)
        code = os.waitstatus_to_exitcode(status)
        stuck = slot.stuck
        slot.pid = None
        slot.kill_at = None
        slot.stuck = False
        self._close_heartbeat(slot)
        if self._stopping:
            log.info("worker %d (pid %d) stopped: %s", slot.worker_id, pid, why)
            return
        if code in FATAL_EXITS:
            log.error(
                "worker %d (pid %d) %s; not restarting it, stopping the supervisor",
                slot.worker_id,
                pid,
                why,
            )
            if self._exit_code is None:
                self._exit_code = code
            return
        if now - slot.started_at >= BACKOFF_RESET:
            slot.delay = BACKOFF_MIN
        delay = slot.delay
        slot.delay = min(slot.delay * 2, self.backoff_max)
        slot.respawn_at = now + delay
        log.warning(
            "worker %d (pid %d) died%s: %s; restarting in %.1fs",
            slot.worker_id,
            pid,
            " after its heartbeat stopped" if stuck else "",
            why,
            delay,
        )

    def _check_heartbeats(self) -> None:
        now = time.monotonic()
        for slot in self._alive():
            assert slot.pid is not None
            if slot.kill_at is not None:
                if now >= slot.kill_at:
                    log.warning(
                        "worker %d (pid %d) still alive %.0fs after SIGTERM; sending SIGKILL",
                        slot.worker_id,
                        slot.pid,
                        KILL_GRACE,
                    )
                    self._kill(slot, signal.SIGKILL)
                    slot.kill_at = None
            elif not slot.stuck and now - slot.last_beat > self.heartbeat_timeout:
                log.warning(
                    "worker %d (pid %d) sent no heartbeat for %.1fs (event loop stuck?); "
                    "sending SIGTERM",
                    slot.worker_id,
                    slot.pid,
                    now - slot.last_beat,
                )
                slot.stuck = True
                self._kill(slot, signal.SIGTERM)
                slot.kill_at = now + KILL_GRACE

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if slot.pid is None and slot.respawn_at is not None and slot.respawn_at <= now:
                self._spawn(slot)

    def _stop_workers(self) -> None:
        """SIGTERM every worker; SIGKILL those alive after shutdown_timeout."""
        self._stopping = True
        for slot in self._alive():
            self._kill(slot, signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout
        while self._by_pid:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wait(min(remaining, 0.1))
            self._signals.clear()  # already stopping: a second SIGTERM changes nothing
            self._reap()
        for slot in self._alive():
            log.warning(
                "worker %d (pid %d) did not stop within %.1fs; sending SIGKILL",
                slot.worker_id,
                slot.pid,
                self.shutdown_timeout,
            )
            self._kill(slot, signal.SIGKILL)
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """SIGKILL and reap whatever still runs (normally nothing)."""
        self._stopping = True
        for pid, slot in list(self._by_pid.items()):
            self._kill(slot, signal.SIGKILL)
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                status = 0
            del self._by_pid[pid]
            self._exited(slot, pid, status)

    # -- processes -----------------------------------------------------------------------

    def _alive(self) -> list[_Slot]:
        return [slot for slot in self._slots if slot.pid is not None]

    @staticmethod
    def _kill(slot: _Slot, sig: int) -> None:
        if slot.pid is None:
            return
        try:
            os.kill(slot.pid, sig)
        except ProcessLookupError:
            pass  # already exited; waitpid will tell why

    def _close_heartbeat(self, slot: _Slot) -> None:
        if slot.hb_fd is not None:
            os.close(slot.hb_fd)
            slot.hb_fd = None

    def _spawn(self, slot: _Slot) -> None:
        hb_r, hb_w = os.pipe()
        os.set_blocking(hb_r, False)
        os.set_blocking(hb_w, False)
        slot.generation += 1
        # Unflushed output would be written twice: by us and by the child.
        sys.stdout.flush()
        sys.stderr.flush()
        # Blocked across fork so that a signal cannot reach the child while it
        # still has our handler (which would write to our self-pipe).
        old_mask: set[int] = set(signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS))
        try:
            pid = os.fork()
            if pid == 0:
                self._child(slot, hb_r, hb_w, old_mask)  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(hb_w)
        now = time.monotonic()
        slot.pid = pid
        slot.hb_fd = hb_r
        slot.started_at = slot.last_beat = now
        slot.respawn_at = None
        slot.kill_at = None
        slot.stuck = False
        self._by_pid[pid] = slot
        log.info("worker %d (pid %d) started (generation %d)", slot.worker_id, pid, slot.generation)

    def _child(self, slot: _Slot, hb_r: int, hb_w: int, old_mask: set[int]) -> None:
        """In the forked child: shed the parent's state, run the worker, exit."""
        code = EXIT_BOOT
        ctx: WorkerContext | None = None
        try:
            for sig in SIGNALS:
                signal.signal(sig, _CHILD_HANDLERS.get(sig, signal.SIG_DFL))
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(hb_r)
            os.close(self._wake_r)
            os.close(self._wake_w)
            for other in self._slots:
                if other.hb_fd is not None:
                    os.close(other.hb_fd)
            for worker_id, group in enumerate(self._sockets):
                if worker_id != slot.worker_id:
                    for sock in group:
                        sock.close()
            if self.pin:
                self._pin(slot.worker_id)
            assert self.run_dir is not None
            ctx = WorkerContext(
                slot.worker_id,
                self.workers,
                self._sockets[slot.worker_id],
                self.run_dir,
                slot.generation,
                hb_w,
            )
            result = self.worker_main(ctx)
            code = EXIT_OK if result is None else int(result)
        except SystemExit as exc:
            if exc.code is None:
                code = EXIT_OK
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                code = EXIT_CRASH
        except KeyboardInterrupt:
            code = EXIT_OK  # Ctrl-C reaches the whole process group
        except BaseException:
            # Before its first heartbeat the worker never served: restarting
            # would fail the same way. After it, a crash is worth a restart.
            booted = ctx is not None and ctx.booted
            code = EXIT_CRASH if booted else EXIT_BOOT
            log.exception(
                "worker %d (pid %d) %s",
                slot.worker_id,
                os.getpid(),
                "crashed" if booted else "failed to boot",
            )
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code & 0xFF)

    @staticmethod
    def _pin(worker_id: int) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        cpu = cpus[worker_id % len(cpus)]
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError as exc:
            log.warning(
                "worker %d (pid %d) cannot pin to CPU %d: %s", worker_id, os.getpid(), cpu, exc
            )
