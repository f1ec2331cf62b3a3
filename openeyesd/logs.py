"""structlog set-up: JSON lines under systemd (the journal keeps them), readable console
output in a terminal. Job id, stage and file are bound per worker thread with
``structlog.contextvars`` and appear on every line logged while that job runs."""

from __future__ import annotations

import logging
import os
import sys

import structlog

from openeyesd.config import LogConfig, LogFormat


def wants_json(config: LogConfig) -> bool:
    if config.format is LogFormat.AUTO:
        # systemd sets JOURNAL_STREAM when stdout/stderr go to the journal.
        return "JOURNAL_STREAM" in os.environ or not sys.stderr.isatty()
    return config.format is LogFormat.JSON


def configure_logging(config: LogConfig) -> None:
    """Safe to call again on reload: it replaces the previous configuration."""
    level = getattr(logging, config.level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if wants_json(config)
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries (alembic, apscheduler, watchdog) log through the standard library.
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr, force=True)
