"""``openeyesd``: wire the parts together and run until SIGTERM.

Start-up order matters: migrate the ledger, hand back jobs of our own dead processes, then
watch, schedule housekeeping, start workers, and only then tell systemd READY. Signals only set
flags; the main thread acts on them between one-second waits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import structlog
from threadpoolctl import threadpool_limits

from openeyesd import __version__
from openeyesd.config import Config, Profile, find_config_path, load_config
from openeyesd.errors import ConfigError
from openeyesd.files import process_alive
from openeyesd.gpu.backends import GpuBackends
from openeyesd.grouping import StageGrouping
from openeyesd.ledger import Ledger, create_ledger_engine, lease_owner_process, migrate
from openeyesd.logs import configure_logging
from openeyesd.pipeline import backends_in_use, eye_region_store, stages_for
from openeyesd.scheduler import build_scheduler, reclaim_stalled
from openeyesd.sdnotify import SystemdNotifier
from openeyesd.watcher import Watcher
from openeyesd.worker import Worker

log = structlog.get_logger()

#: Exit status for a configuration error; the unit file lists it in RestartPreventExitStatus
#: so systemd does not restart a daemon that cannot start until someone edits the file.
EXIT_CONFIG = 2


def pid_file(config: Config) -> Path:
    return config.state.dir / "openeyesd.pid"


class Daemon:
    def __init__(self, config: Config, *, notifier: SystemdNotifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or SystemdNotifier()
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()
        self.engine = create_ledger_engine(config.ledger_url,
                                           busy_timeout_s=config.ledger.busy_timeout_s)
        self.ledger = Ledger(self.engine, pipeline_version=config.pipeline.version)
        self.workers: list[Worker] = []
        self.threads: list[threading.Thread] = []

    def run(self) -> int:
        self._install_signal_handlers()
        self._prepare_state()
        self.watcher = Watcher(self.config, self.ledger)
        self.watcher.start()
        self.scheduler = build_scheduler(self.config, self.ledger, rescan=self.watcher.rescan)
        self.scheduler.start()
        self._start_workers()
        self.notifier.notify(READY=1, STATUS="started", MAINPID=os.getpid())
        log.info("daemon.ready", version=__version__, workers=len(self.workers),
                 backends=backends_in_use(self.config), ledger=self._safe_ledger_url())
        try:
            self._main_loop()
        finally:
            self._shutdown()
        return 0

    # -- start-up ----------------------------------------------------------------------------

    def _prepare_state(self) -> None:
        for folder in (self.config.state.dir, self.config.jobs_dir, self.config.output.path):
            folder.mkdir(parents=True, exist_ok=True)
        migrate.upgrade(self.engine)
        pid_file(self.config).write_text(f"{os.getpid()}\n")
        released = self.ledger.release_leases(self._dead_local_owners())
        if released:
            log.warning("jobs.resumed_after_crash", job_ids=released)
        reclaim_stalled(self.ledger, self.config)

    def _dead_local_owners(self) -> list[str]:
        """Lease owners on this host whose process is gone: a crash, kill -9 or reboot."""
        hostname = socket.gethostname()
        dead = []
        for running in self.ledger.stats().running:
            owner = running.lease_owner or ""
            process = lease_owner_process(owner)
            if process and process[0] == hostname and not process_alive(process[1]):
                dead.append(owner)
        return dead

    def _start_workers(self) -> None:
        one_blas_thread_per_worker(self.config.worker.concurrency)
        backends = json.dumps(backends_in_use(self.config))
        # One set of GPU models for all workers (they would not fit twice); CPU models are
        # small and not thread-safe, so each worker builds its own.
        gpu = GpuBackends(self.config) if self.config.pipeline.profile is Profile.GPU else None
        # Shared like the models it watches: the workers take turns with one set of them.
        grouping = None if gpu is None else StageGrouping(self.ledger, gpu)
        # One store, so a donor assessed by one worker lends its eyes to a fix in another.
        regions = eye_region_store(self.config)
        for slot in range(self.config.worker.concurrency):
            worker = Worker(config=self.config, ledger=self.ledger, slot=slot, stop=self.stopping,
                            stages=lambda: stages_for(self.config, gpu, regions), grouping=grouping)
            self.ledger.register_worker(worker.worker_id, hostname=socket.gethostname(),
                                        pid=os.getpid(), backends=backends)
            thread = threading.Thread(target=worker.run, name=f"worker-{slot}")
            thread.start()
            self.workers.append(worker)
            self.threads.append(thread)

    def _install_signal_handlers(self) -> None:
        def on_stop(signum: int, _frame: FrameType | None) -> None:
            self.stopping.set()

        def on_hup(_signum: int, _frame: FrameType | None) -> None:
            self.reload_requested.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    # -- running -----------------------------------------------------------------------------

    def _main_loop(self) -> None:
        watchdog_every = self.notifier.watchdog_interval_s()
        last_watchdog = last_status = 0.0
        while not self.stopping.wait(0.5):
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            now = time.monotonic()
            if now - last_status >= 5:
                self._report_status()
                last_status = now
            if watchdog_every and now - last_watchdog >= watchdog_every and self._healthy():
                self.notifier.notify(WATCHDOG=1)
                last_watchdog = now

    def _healthy(self) -> bool:
        """Feed the watchdog only while every worker shows progress: a worker stuck inside a
        stage for longer than worker.stall_timeout_s lets systemd restart us."""
        limit = self.config.worker.stall_timeout_s
        alive = all(thread.is_alive() for thread in self.threads)
        progressing = all(time.monotonic() - w.last_progress < limit for w in self.workers)
        return alive and progressing

    def _report_status(self) -> None:
        try:
            depth = self.ledger.stats().queue_depth
        except Exception as exc:  # noqa: BLE001 - a locked ledger must not stop the loop
            log.warning("status.unavailable", error=str(exc))
            return
        busy = [
            f"job {w.current_job.id} {w.current_job.relative_path} ({w.current_stage or '...'})"
            for w in self.workers if w.current_job is not None
        ]
        status = f"queue {depth}; " + ("; ".join(busy) if busy else "idle")
        self.notifier.notify(STATUS=status)

    def reload(self) -> None:
        """SIGHUP / ``openeyesctl reload``: apply what is safe to change while running."""
        source = self.config.source
        try:
            new = load_config(source) if source else self.config
        except ConfigError as exc:
            log.error("reload.rejected", error=str(exc))
            return
        if new.ledger_url != self.config.ledger_url or new.state.dir != self.config.state.dir:
            log.warning("reload.needs_restart", keys="ledger.url, state.dir")
        configure_logging(new.log)
        for worker in self.workers:
            worker.config = new
        if new.watch != self.config.watch:
            self.watcher.stop()
            self.watcher = Watcher(new, self.ledger)
            self.watcher.start()
        self.config = new
        log.info("reload.done", config=str(source))

    # -- stopping ----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        self.notifier.notify(STOPPING=1, STATUS="stopping: finishing the current stage")
        log.info("daemon.stopping")
        self.stopping.set()
        self.watcher.stop()
        self.scheduler.shutdown(wait=False)
        deadline = time.monotonic() + self.config.worker.stop_timeout_s
        for thread in self.threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0.1))
        for worker in self.workers:
            self.ledger.unregister_worker(worker.worker_id)
        pid_file(self.config).unlink(missing_ok=True)
        log.info("daemon.stopped")

    def _safe_ledger_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)


def one_blas_thread_per_worker(concurrency: int) -> None:
    """With several workers, the workers are the parallelism: BLAS (NumPy's matrix products,
    the identity descriptor's network) runs one thread per call. Measured here on 2 cores, two
    workers describing faces at once: 13 ms a face with one BLAS thread each, 21 ms with
    OpenBLAS's default of one per core (they fight for the same cores). One worker keeps the
    default; its gain is small (16 vs 17 ms) but free."""
    if concurrency > 1:
        threadpool_limits(limits=1, user_api="blas")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openeyesd", description=__doc__)
    parser.add_argument("--config", help="config file (default: $OPENEYES_CONFIG, "
                        "./config.toml, /etc/openeyes/config.toml)")
    parser.add_argument("--version", action="version", version=f"openeyesd {__version__}")
    args = parser.parse_args(argv)
    try:
        config = load_config(find_config_path(args.config))
    except ConfigError as exc:
        print(f"openeyesd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log)
    return Daemon(config).run()


if __name__ == "__main__":
    sys.exit(main())
