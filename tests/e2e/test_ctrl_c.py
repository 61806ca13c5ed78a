"""End to end: a person's Ctrl-C stops everything `make run` started.

`make run`'s command (`python -m deploy.local.demo`, on a private state directory
and free ports) runs in a shell under a pseudo-terminal (a tmux pane of a tmux
server of this test's own). Once the sample cases are delivered, one service is
killed with SIGKILL and started again the way the README says
(`python -m deploy.local.stack up`, which starts what is not running). Then Ctrl-C
is typed into the pane: the terminal sends SIGINT to the whole foreground process
group, as it does for a person. Within 60 s every process the stack started
(services and infrastructure, SeaweedFS included: the PID files and the stack's
`started-pids.txt`) must be gone, no process may still carry the state directory
in its environment, and the pane's shell must still answer."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from deploy.local.stack import SERVICES, pid_alive, read_pid
from tests.conftest import REPO

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed"),
]


class Pane:
    """A shell in a tmux pane, on a tmux server of our own (its socket in `where`)."""

    def __init__(self, env: dict[str, str], where: Path) -> None:
        self.socket = str(where / "tmux.sock")
        self.env = env
        self.tmux("new-session", "-d", "-s", "run", "-x", "200", "-y", "50", "sh")

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-S", self.socket, "-f", "/dev/null", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout

    def type(self, line: str) -> None:
        self.tmux("send-keys", "-t", "run", "-l", line)
        self.tmux("send-keys", "-t", "run", "Enter")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "run", "-S", "-3000")

    def shell_pid(self) -> int:
        return int(self.tmux("display-message", "-p", "-t", "run", "#{pane_pid}").strip())

    def wait_for(self, text: str, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if text in self.screen():
                return
            time.sleep(0.5)
        raise AssertionError(f"{text!r} not on the screen after {within:.0f}s:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-S", self.socket, "kill-server"], env=self.env, capture_output=True
        )


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    # Whatever the test saw, leave nothing running.
    env = {**os.environ, "LOCAL_STATE_DIR": str(tmp_path), "LOCAL_PORTS": "auto"}
    subprocess.run(
        [sys.executable, "-m", "deploy.local.stack", "down"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=120,
    )


def started_pids(state: Path) -> set[int]:
    """Every PID the stack recorded: its log of started PIDs and the PID files now."""
    pids = {int(p) for p in (state / "started-pids.txt").read_text().split()}
    for f in [*(state / "services/pids").glob("*.pid"), *(state / "infra/pids").glob("*.pid")]:
        if pid := read_pid(f):
            pids.add(pid)
    return pids


def carrying(state: Path) -> list[str]:
    """Processes whose environment names this state directory (all the stack's)."""
    needle = f"LOCAL_STATE_DIR={state}"
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(e == needle for e in (f"{k}={v}" for k, v in proc.environ().items())):
                out.append(f"{proc.pid} {' '.join(proc.info['cmdline'] or [])[:120]}")
        except psutil.Error:
            continue
    return out


def test_ctrl_c_in_a_terminal_stops_everything_after_a_restart(
    state: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    env = {**os.environ, "LOCAL_STATE_DIR": str(state), "LOCAL_PORTS": "auto"}
    # The state directory is named on the command line only, as a person would, so
    # that the pane's shell (which must survive) does not carry it.
    shell_env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "LOCAL_STATE_DIR")}
    pane = Pane(shell_env, tmp_path_factory.mktemp("tty"))
    try:
        pane.type(
            f"cd {shlex.quote(str(REPO))} && LOCAL_STATE_DIR={shlex.quote(str(state))} "
            f"LOCAL_PORTS=auto {shlex.quote(sys.executable)} -m deploy.local.demo"
        )
        pane.wait_for("Press Ctrl-C to stop.", within=240)
        assert "All sample cases delivered; partner webhooks verified: True" in pane.screen()

        # A service dies during the run and is started again.
        pid_file = state / "services/pids/records_fetch.pid"
        killed = read_pid(pid_file)
        assert killed and pid_alive(killed)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(killed) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(killed)
        subprocess.run(
            [sys.executable, "-m", "deploy.local.stack", "up"],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        restarted = read_pid(pid_file)
        assert restarted and restarted != killed and pid_alive(restarted)
        pids = started_pids(state)
        assert restarted in pids
        assert len(pids) >= len(SERVICES) + 7 + 1  # services, infra parts, the restart
        infra = {f.stem for f in (state / "infra/pids").glob("*.pid")}
        assert {"s3", "kafka", "mongo"} <= infra
        alive_before = [p for p in pids if pid_alive(p)]
        assert len(alive_before) >= len(SERVICES) + len(infra)

        shell = pane.shell_pid()
        pane.tmux("send-keys", "-t", "run", "C-c")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = [p for p in pids if pid_alive(p)]
            if not left and not carrying(state):
                break
            time.sleep(0.5)
        left = [p for p in pids if pid_alive(p)]
        assert left == [], (left, carrying(state), pane.screen()[-3000:])
        assert carrying(state) == []

        # The shell in the pane survived and takes the next command.
        assert pid_alive(shell)
        pane.type("echo still-$((40 + 2))-here")
        pane.wait_for("still-42-here", within=10)
    finally:
        pane.close()
