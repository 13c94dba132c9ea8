"""DICOM processes beside the gateway's own, all serving one listening socket.

Filing a DICOM object is Python work under the interpreter's lock: four associations of small
images on a 2-core box kept one process's lock busy while the second core waited. ``yilian
serve`` with ``YILIAN_DICOM_PROCESSES`` above one opens the DICOM port itself and starts that
many processes less one, each running the same DICOM server (``gateway.listeners.dicom_server``)
on a copy of the socket, with the gateway's settings, database and object store: whichever
process is least busy accepts an association (``dicom.scp._SharedServer``) and serves it whole.
What they share is taken in turns across processes: the SQLite writer (``records.db.WriterTurns``),
a SOP Instance UID being filed (``dicom.keylocks``); the rest lives in the database.

A process reads the settings on its standard input, then serves until that input ends: when
the gateway stops it (``stop``), or dies however it dies, so a process never outlives the
gateway holding the port. One that ends on its own is started again.

    python -m gateway.dicom_processes FD   (FD: the listening socket, passed by the gateway)
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from gateway.settings import Settings

log = logging.getLogger("gateway.dicom_processes")  # also when run as __main__

STOP_WAIT = 30.0  # seconds a process has to stop (its server, writer and threads) when asked
RESTART_AFTER = (1.0, 60.0)  # seconds before starting a process again: first, at most


class DicomProcesses:
    """``count`` processes serving ``listening`` beside the gateway's own DICOM server."""

    def __init__(self, count: int, listening: socket.socket, settings: Settings) -> None:
        self.count = count
        self.listening = listening
        self.settings = settings
        self._processes: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="dicom-processes", daemon=True)

    def start(self) -> None:
        with self._lock:
            self._processes = [self._spawn() for _ in range(self.count)]
        self._watcher.start()
        log.info("DICOM served by %d more processes beside this one", self.count)

    def stop(self) -> None:
        """Each process stops taking associations, closes its writer and exits; associations
        it still serves break off, as the gateway's own do when it stops."""
        self._stopping.set()
        if self._watcher.is_alive():
            self._watcher.join()
        with self._lock:
            processes, self._processes = self._processes, []
        for process in processes:
            _close(process)
        deadline = time.monotonic() + STOP_WAIT
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("DICOM process %d did not stop in %g s: killed", process.pid, STOP_WAIT)
                process.kill()
                process.wait()

    def _spawn(self) -> subprocess.Popen[bytes]:
        fd = self.listening.fileno()
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.dicom_processes", str(fd)],
            stdin=subprocess.PIPE,
            pass_fds=(fd,),
        )
        assert process.stdin is not None
        process.stdin.write(self.settings.model_dump_json().encode() + b"\n")
        process.stdin.flush()
        return process

    def _watch(self) -> None:
        """Start again a process that ended while the gateway runs, waiting longer each time
        one ends within a minute of its start (a process that cannot start at all)."""
        started = {id(p): time.monotonic() for p in self._processes}
        delay = RESTART_AFTER[0]
        while not self._stopping.wait(1.0):
            with self._lock:
                ended = [(k, p) for k, p in enumerate(self._processes) if p.poll() is not None]
            for k, process in ended:
                log.error(
                    "DICOM process %d ended (exit status %s): starting another",
                    process.pid,
                    process.returncode,
                )
                _close(process)
                quick = time.monotonic() - started.pop(id(process), 0.0) < 60
                delay = min(delay * 2, RESTART_AFTER[1]) if quick else RESTART_AFTER[0]
                if self._stopping.wait(delay):
                    return
                with self._lock:
                    self._processes[k] = self._spawn()
                    started[id(self._processes[k])] = time.monotonic()


def _close(process: subprocess.Popen[bytes]) -> None:
    """End a process's standard input: it stops (``serve``)."""
    if process.stdin is not None:
        try:
            process.stdin.close()
        except OSError:  # it has gone already
            pass


def serve(fd: int) -> None:
    """A DICOM process: serve the listening socket ``fd`` until standard input ends."""
    from gateway.context import Context
    from gateway.listeners import dicom_server
    from gateway.observability import configure_logging

    settings = Settings.model_validate_json(sys.stdin.buffer.readline())
    configure_logging(settings.log_level)
    stop = threading.Event()

    def watch_input() -> None:
        sys.stdin.buffer.read()  # returns when the gateway closes it, or is gone
        stop.set()

    threading.Thread(target=watch_input, name="gateway-watch", daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGINT):  # a service manager stops the whole group
        signal.signal(sig, lambda *_: stop.set())
    ctx = Context.build(settings, migrate=False, reading=True)
    server = dicom_server(ctx)
    try:
        server.start(socket.socket(fileno=fd), sweep=False)
        log.info("DICOM process %d serving", os.getpid())
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        ctx.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
