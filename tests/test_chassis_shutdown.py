"""Integration tier: a real service process (chassis.service.run) on a real nats-server whose shutdown cannot finish
reports what it is still doing — the tasks still running in its log, every thread's stack on stderr — once the
shutdown has outlived its grace, so an operator who has to SIGKILL it knows why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chassis.service import STUCK_REPORT_AFTER_S

pytestmark = pytest.mark.integration

GRACE_S = 0.5


def wait_for(path: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        assert time.monotonic() < deadline, f"{text!r} not in the log after {timeout}s:\n{content[-3000:]}"
        time.sleep(0.1)


def test_a_shutdown_that_outlives_its_grace_says_which_task_and_thread_hold_it(clean_nats: str,
                                                                              tmp_path: Path) -> None:
    log = tmp_path / "stuck.log"
    env = {**os.environ, "CCE_NATS_URL": clean_nats, "CCE_SERVICE_ID": "stuck-1", "CCE_HTTP_PORT": "0",
           "CCE_SHUTDOWN_GRACE_S": str(GRACE_S), "CCE_LOG_JSON": "true"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.stuck_service"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent)
    try:
        wait_for(log, "service started", 30)
        proc.send_signal(signal.SIGTERM)
        content = wait_for(log, "Thread 0x", GRACE_S + STUCK_REPORT_AFTER_S + 1 + 15)
        assert "shutdown is taking long; still running" in content
        assert "refuses-to-stop: refuses_to_stop (stuck_service.py:" in content  # the task and where it waits
        assert "most recent call first" in content and "stuck_service.py" in content.split("Thread 0x", 1)[1]
        assert proc.poll() is None  # reporting does not kill it: that stays the supervisor's call
    finally:
        proc.kill()
        proc.wait()
