"""Reliability harnesses: crash consistency under SIGKILL (:mod:`shoplens.reliability.crash`),
hostile-input corpora (the ``hostile*`` modules)."""

from shoplens.reliability.crash import (
    JOBS,
    CrashConfig,
    CrashHarness,
    CrashReport,
    KillRecord,
    run_crash_harness,
)

__all__ = ["JOBS", "CrashConfig", "CrashHarness", "CrashReport", "KillRecord", "run_crash_harness"]
