#!/usr/bin/env python3
"""Start and stop a throwaway single-node SLURM cluster that lives entirely under one directory.

The cluster is made of Debian's own Slurm 22.05 and munge packages (installed with apt-get on first use) and
runs as root on 127.0.0.1: munged, slurmctld and slurmd, with their config, munge key and socket, spool,
state, logs, pid files and fake GPU device nodes all kept under `root`. Nothing in /etc is read or written,
no systemd or cgroups are needed, and the two Slurm ports are picked at random away from the default
6817/6818, so a developer's real cluster on the same machine is left alone.

Finished jobs are written to a jobcomp text file (there is no accounting database), so their final state is
still readable after slurmctld has forgotten them.

From pytest::

    ok, why = is_available()
    with LocalSlurm("/tmp/sl1").start() as cluster:
        job = cluster.run("sbatch", "--parsable", "--wrap", "true").stdout.strip()
        cluster.wait_for_jobs([job])

From a shell::

    eval "$(python tests/slurm_local.py start /tmp/sl1 --gpus 4)"
    sbatch --wrap hostname
    python tests/slurm_local.py stop /tmp/sl1

Only the standard library is used, so the module can be copied or run on its own.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"])

SOCKET_PATH_LIMIT = 107  # sun_path holds 108 bytes, one of which is the terminating NUL
PORT_RANGE = (20000, 32000)  # below Linux's ephemeral range, so client connections never take them
DEFAULT_PORTS = {6817, 6818, 6819}
STOP_ORDER = ("slurmd", "slurmctld", "munged")
INSTALL_LOCK = Path(tempfile.gettempdir()) / "tests-slurm-install.lock"
APT_LOCK_WAIT_S = 900

# Job states after which a job will not run again. Anything else (PENDING, RUNNING, COMPLETING, CONFIGURING,
# SUSPENDED, REQUEUED, ...) counts as still active.
FINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
    "OUT_OF_MEMORY", "REVOKED",
})

# Client settings inherited from the caller's shell (or from an outer SLURM job) that would point the clients
# somewhere else or change their output format; they are dropped from `LocalSlurm.env`.
CLIENT_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_", "SCONTROL_", "SCANCEL_",
                       "SACCT_")


class SlurmCommandError(subprocess.CalledProcessError):
    """A client command exited non-zero; unlike its parent class, the message includes stdout and stderr."""

    def __str__(self) -> str:
        out = (self.stdout or "").strip()
        err = (self.stderr or "").strip()
        return (f"{shlex.join(self.cmd)} exited with status {self.returncode}"
                f"\n--- stderr ---\n{err or '(empty)'}\n--- stdout ---\n{out or '(empty)'}")


# --------------------------------------------------------------------------------------------- availability

def _which(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def _missing_binaries() -> list[str]:
    return [name for name in BINARIES if _which(name) is None]


def is_available() -> tuple[bool, str]:
    """Whether a local cluster can be started here: `(True, "")`, or `(False, reason)` for a test skip."""
    if not sys.platform.startswith("linux"):
        return False, f"a local SLURM cluster needs Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return False, f"a local SLURM cluster needs root (slurmd, mknod, apt-get); running as uid {os.geteuid()}"
    missing = _missing_binaries()
    if missing and _which("apt-get") is None:
        return False, f"SLURM/munge binaries missing ({', '.join(missing)}) and no apt-get to install them"
    return True, ""


def install_packages() -> None:
    """apt-get install the four packages when any binary is missing; on failure refresh the index and retry once."""
    if not _missing_binaries():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT_S}"]  # another apt-get at work (a browser's install): wait
    install = ["apt-get", *wait, "install", "-y", "--no-install-recommends", *PACKAGES]
    with open(INSTALL_LOCK, "w") as lock:  # two test processes at once: one installs, the other waits and finds it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _missing_binaries():
            return
        result = subprocess.run(install, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            subprocess.run(["apt-get", *wait, "update"], env=env, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
            result = subprocess.run(install, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    missing = _missing_binaries()
    if result.returncode != 0 or missing:
        output = _last_lines(f"{result.stdout}\n{result.stderr}")
        raise RuntimeError(f"could not install {' '.join(PACKAGES)} (status {result.returncode}, still missing: "
                           f"{', '.join(missing) or 'nothing'}):\n{output}")


# ------------------------------------------------------------------------------------------ process helpers

def _proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat, or None when the process no longer exists."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text.rpartition(")")[2].split()[0]


def _is_running(pid: int) -> bool:
    """True for a live process. A zombie counts as gone: PID 1 may take its time to reap orphans."""
    state = _proc_state(pid)
    return state is not None and state != "Z"


def _read_proc(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def _comm(pid: int) -> str:
    return _read_proc(pid, "comm").decode(errors="replace").strip()


def _cmdline(pid: int) -> list[str]:
    return [a.decode(errors="replace") for a in _read_proc(pid, "cmdline").split(b"\0") if a]


def _environ(pid: int) -> dict[str, str]:
    pairs = (item.decode(errors="replace").partition("=") for item in _read_proc(pid, "environ").split(b"\0"))
    return {key: value for key, _, value in pairs if key}


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _descendants(pids: set[int]) -> set[int]:
    """Every live process below `pids` in the process tree."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        parent = _parent_pid(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {pid for pid in found if _is_running(pid)}


def _wait_gone(pids, timeout: float) -> set[int]:
    """Wait until each pid has exited or is a zombie; return those still running at the deadline."""
    deadline = time.monotonic() + timeout
    left = {pid for pid in pids if _is_running(pid)}
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = {pid for pid in left if _is_running(pid)}
    return left


def _signal_if(pid: int, sig: int, comm: str | None) -> None:
    """Send `sig` to pid, but only if it is still running and (when given) still has the expected name."""
    if not _is_running(pid) or (comm is not None and _comm(pid) != comm):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------------------------------ small helpers

def _last_lines(text: str, count: int = 25) -> str:
    lines = text.rstrip().splitlines()
    return "\n".join(lines[-count:]) if lines else "(empty)"


def _log_tail(path: Path, count: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"--- {path}: not written ---"
    return f"--- last lines of {path} ---\n{_last_lines(text, count)}"


def _short_hostname() -> str:
    try:
        name = subprocess.run(["hostname", "-s"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        name = ""
    return name or socket.gethostname().split(".")[0]


def _port_free(port: int) -> bool:
    """Whether a listener could bind `port` (on 127.0.0.1 and on all addresses, as slurmctld/slurmd do)."""
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def _pick_ports() -> tuple[int, int]:
    """Two distinct free ports from PORT_RANGE, never the SLURM defaults."""
    rng = random.SystemRandom()
    for _ in range(500):
        a, b = rng.randrange(*PORT_RANGE), rng.randrange(*PORT_RANGE)
        if a != b and not {a, b} & DEFAULT_PORTS and _port_free(a) and _port_free(b):
            return a, b
    raise RuntimeError(f"found no two free TCP ports in {PORT_RANGE[0]}-{PORT_RANGE[1]} on 127.0.0.1")


def _expand_tasks(spec: str) -> list[str]:
    """'0-3,7' or '0-6:2%2' as shown in ArrayTaskId -> the single task ids as strings."""
    tasks: list[str] = []
    for part in spec.split("%")[0].split(","):
        rng, _, step = part.partition(":")
        first, _, last = rng.partition("-")
        if not first.isdigit():
            continue
        stop = int(last) if last.isdigit() else int(first)
        tasks.extend(str(t) for t in range(int(first), stop + 1, int(step) if step.isdigit() else 1))
    return tasks


def _fields(line: str) -> dict[str, str]:
    """Key=Value pairs of one `scontrol -o` or jobcomp line (values are taken up to the next space)."""
    return dict(re.findall(r"(?:^|\s)([A-Za-z]+)=(\S*)", line))


def _record_states(fields: dict[str, str]) -> dict[str, str]:
    """One job record -> {"<job>": state} or {"<array job>_<task>": state, ...}."""
    state = fields.get("JobState", "UNKNOWN").split()[0]
    array_id, tasks = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
    if array_id and array_id not in ("0", "4294967294") and tasks and tasks not in ("N/A", "4294967294"):
        return {f"{array_id}_{task}": state for task in _expand_tasks(tasks)}
    return {fields["JobId"]: state} if "JobId" in fields else {}


def _matches(fields: dict[str, str], job_id: str) -> bool:
    """Whether a jobcomp record belongs to `job_id` ('12', or one array task as '12_3')."""
    array_id, _, task = job_id.partition("_")
    if task:
        return fields.get("ArrayJobId") == array_id and task in _expand_tasks(fields.get("ArrayTaskId", ""))
    return fields.get("JobId") == job_id or fields.get("ArrayJobId") == job_id


# ---------------------------------------------------------------------------------------------- the cluster

class LocalSlurm:
    """One private single-node cluster rooted at `root` (keep the path short: munge's socket lives there).

    `start()` installs the packages if needed, writes the configs, starts munged, slurmctld and slurmd and waits
    until the node is idle; `stop()` cancels every job and stops the daemons again. Client commands go through
    `run()`, or any subprocess given `env`.
    """

    def __init__(self, root: str | Path, gpus: int = 4, cpus: int = 8, memory_mb: int = 16000,
                 partition: str = "debug", ports: tuple[int, int] | None = None):
        self.root = Path(os.path.abspath(os.fspath(root)))
        if gpus < 0 or cpus < 1 or memory_mb < 1:
            raise ValueError(f"need gpus >= 0, cpus >= 1 and memory_mb >= 1 (got {gpus}, {cpus}, {memory_mb})")
        if ports is not None and (len(ports) != 2 or ports[0] == ports[1]):
            raise ValueError(f"ports must be two different port numbers (slurmctld, slurmd), got {ports!r}")
        self.gpus, self.cpus, self.memory_mb, self.partition = gpus, cpus, memory_mb, partition
        self.requested_ports = tuple(ports) if ports else None
        self.ports: tuple[int, int] | None = None  # the ones in use after start()
        self.node: str | None = None
        self._deadline = 0.0  # monotonic time by which start() must be done
        socket_bytes = len(os.fsencode(self.munge_socket))
        if socket_bytes > SOCKET_PATH_LIMIT:
            raise ValueError(f"cluster root {self.root} is too long: the munge socket path {self.munge_socket} "
                             f"would be {socket_bytes} bytes, over the unix-socket limit of {SOCKET_PATH_LIMIT}; "
                             f"use a shorter directory such as tempfile.mkdtemp(prefix='sl', dir='/tmp')")

    # Paths under root.
    @property
    def conf_path(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket.2"

    @property
    def munge_key(self) -> Path:
        return self.root / "munge" / "munge.key"

    @property
    def jobcomp_path(self) -> Path:
        return self.root / "log" / "jobcomp.log"

    @property
    def work_dir(self) -> Path:
        """Default working directory of `run()`, so job output files land under root, not in the caller's cwd."""
        return self.root / "work"

    def log_path(self, daemon: str) -> Path:
        return self.root / "log" / f"{daemon}.log"

    def pid_path(self, daemon: str) -> Path:
        return self.root / "run" / f"{daemon}.pid"

    def __repr__(self) -> str:
        return f"LocalSlurm({str(self.root)!r}, gpus={self.gpus}, cpus={self.cpus}, ports={self.ports})"

    def __enter__(self) -> "LocalSlurm":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -------------------------------------------------------------------------------------- clients

    @property
    def env(self) -> dict[str, str]:
        """os.environ without inherited SLURM client settings, plus SLURM_CONF pointing at this cluster."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(CLIENT_ENV_PREFIXES)}
        env["SLURM_CONF"] = str(self.conf_path)
        env["PATH"] = SEARCH_PATH
        # The cluster's GPUs are device files of our own and torch here is the CPU build: jobs given those GPUs run
        # on the CPU, which the pipeline refuses elsewhere (hardware.check_job_torch, submit.check_jobs_torch).
        env["PIPELINE_ALLOW_CPU_TORCH"] = "1"
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 60,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run a client command (sbatch, squeue, scontrol, scancel, sinfo, srun, ...) against this cluster.

        Output is captured as text. With check=True a non-zero exit raises SlurmCommandError showing stderr.
        The working directory defaults to `work_dir` under root.
        """
        argv = [os.fspath(a) for a in args]
        if cwd is None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            cwd = self.work_dir
        result = subprocess.run(argv, env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise SlurmCommandError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def job_states(self, job_id) -> dict[str, str]:
        """Current state of a job, or of each task of an array job: {"12": "RUNNING"} or {"12_0": ..., "12_1": ...}.

        The jobcomp file gives what has ended; slurmctld's live records override it. slurmctld forgets each
        record MinJobAge after it ended, array tasks one by one, so on a slow machine it may still show an array's
        last tasks when it has forgotten the first ones: both sources are needed for the whole array. Returns {}
        for a job id neither knows.
        """
        job = str(job_id)
        states = self.jobcomp_states(job)
        result = self.run("scontrol", "show", "job", "-o", job, check=False)
        if result.returncode == 0:
            for line in result.stdout.splitlines():
                if line.strip():
                    states.update(_record_states(_fields(line)))
        elif "Invalid job id" not in result.stderr:
            raise SlurmCommandError(result.returncode, ["scontrol", "show", "job", "-o", job], result.stdout,
                                    result.stderr)
        return states

    def jobcomp_states(self, job_id) -> dict[str, str]:
        """Final states of a job (or its array tasks) as logged in the jobcomp file; {} when not logged."""
        job_id = str(job_id)
        try:
            lines = self.jobcomp_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return {}
        states: dict[str, str] = {}
        for line in lines:  # later lines win: a requeued job is logged once per run
            fields = _fields(line)
            if _matches(fields, job_id):
                states.update(_record_states(fields))
        if "_" in job_id:
            return {key: value for key, value in states.items() if key == job_id}
        return states

    def wait_for_jobs(self, job_ids, timeout: float = 300, poll: float = 0.25) -> dict[str, str]:
        """Poll until every job (each array task included) has reached a final state; return all final states.

        Keys are "<jobid>" for plain jobs and "<jobid>_<task>" for array tasks. Raises ValueError for a job id
        the cluster does not know and TimeoutError (naming the jobs still active) after `timeout` seconds.
        """
        ids = [str(job_ids)] if isinstance(job_ids, (str, int)) else [str(j) for j in job_ids]
        deadline = time.monotonic() + timeout
        while True:
            states: dict[str, str] = {}
            for job in ids:
                found = self.job_states(job)
                if not found:
                    raise ValueError(f"job {job} is unknown to slurmctld and absent from {self.jobcomp_path}")
                states.update(found)
            active = {key: value for key, value in states.items() if value not in FINAL_STATES}
            if not active:
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still not finished after {timeout:.0f} s: {active}")
            time.sleep(poll)

    # -------------------------------------------------------------------------------------- start

    def start(self, timeout: float = 60) -> "LocalSlurm":
        """Bring the cluster up and wait until `sinfo` shows the node idle; returns self.

        Leftover daemons of an earlier cluster under the same root are stopped first, and the saved controller
        state is wiped, so every start is a fresh cluster whose job ids begin at 1. `timeout` bounds the daemons'
        start-up, not a first-time package install. On failure whatever did start is stopped again.
        """
        install_packages()
        self.stop()
        self._deadline = time.monotonic() + timeout
        self.node = _short_hostname()
        self.ports = self.requested_ports or _pick_ports()
        for port in self.ports:
            if not _port_free(port):
                raise RuntimeError(f"TCP port {port} is already in use; pick other ports for the cluster at "
                                   f"{self.root} (another SLURM cluster may be listening there)")
        self._prepare_tree()
        self._write_configs()
        self._make_gpu_devices()
        try:
            self._start_munged()
            self._start_daemon("slurmctld", ["slurmctld", "-f", str(self.conf_path)])
            self._start_daemon("slurmd", ["slurmd", "-f", str(self.conf_path), "-N", self.node])
            self._wait_node_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare_tree(self) -> None:
        """Create the directory layout, wipe state/spool/dev from earlier runs and rotate the old logs."""
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("state", "spool", "dev"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        for sub in ("etc", "munge", "state", "spool", "run", "log", "dev", "work"):
            (self.root / sub).mkdir(exist_ok=True)
            os.chmod(self.root / sub, 0o755)
        for log in (self.root / "log").glob("*.log"):
            log.replace(log.with_name(log.name + ".old"))
        self._open_up_path()

    def _open_up_path(self) -> None:
        """munged wants its socket directory and every parent searchable by everybody (and clients that are not
        root need that too): make root 0755 and add only the search bits to parents that lack them."""
        os.chmod(self.root, 0o755)
        for parent in self.root.parents:
            mode = stat.S_IMODE(parent.stat().st_mode)
            if mode & 0o011 != 0o011:
                os.chmod(parent, mode | 0o011)

    def _write_configs(self) -> None:
        self.conf_path.write_text(self._slurm_conf())
        gres = self.root / "etc" / "gres.conf"
        if self.gpus:
            last = self.gpus - 1
            files = f"{self.root}/dev/nvidia" + (f"[0-{last}]" if last else "0")
            gres.write_text(f"NodeName={self.node} Name=gpu File={files}\n")
        else:
            gres.unlink(missing_ok=True)

    def _slurm_conf(self) -> str:
        r, (ctld_port, slurmd_port) = self.root, self.ports
        settings = {
            "ClusterName": "localtest",
            "SlurmctldHost": f"{self.node}(127.0.0.1)",
            "SlurmctldPort": ctld_port,
            "SlurmdPort": slurmd_port,
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={self.munge_socket}",
            "StateSaveLocation": r / "state",
            "SlurmdSpoolDir": r / "spool",
            "SlurmctldPidFile": self.pid_path("slurmctld"),
            "SlurmdPidFile": self.pid_path("slurmd"),
            "SlurmctldLogFile": self.log_path("slurmctld"),
            "SlurmdLogFile": self.log_path("slurmd"),
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "AccountingStorageType": "accounting_storage/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "JobCompType": "jobcomp/filetxt",
            "JobCompLoc": self.jobcomp_path,
            "MpiDefault": "none",
            "SwitchType": "switch/none",
            "MailProg": "/bin/true",
            "PropagateResourceLimits": "NONE",
            "SlurmdParameters": "config_overrides",  # lets CPUs= exceed the machine's real core count
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU",
            "SchedulerType": "sched/backfill",
            "SchedulerParameters": "batch_sched_delay=0",  # the 3 s default delays every job start
            "DependencyParameters": "kill_invalid_depend",  # in 22.05 it is ignored under SchedulerParameters
            "EnforcePartLimits": "ALL",  # impossible requests fail at submission instead of pending forever
            "ReturnToService": 2,
            "MinJobAge": 300,
        }
        if self.gpus:
            settings["GresTypes"] = "gpu"
        lines = [f"{key}={value}" for key, value in settings.items()]
        node = (f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} Sockets=1 CoresPerSocket={self.cpus} "
                f"ThreadsPerCore=1 RealMemory={self.memory_mb}")
        if self.gpus:
            node += f" Gres=gpu:{self.gpus}"
        lines.append(node + " State=UNKNOWN")
        lines.append(f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP")
        return "# Written by tests/slurm_local.py; rewritten on every start.\n" + "\n".join(lines) + "\n"

    def _make_gpu_devices(self) -> None:
        """Fake GPUs: slurmd only accepts character or block devices in gres.conf, so use /dev/null's numbers."""
        for index in range(self.gpus):
            os.mknod(self.root / "dev" / f"nvidia{index}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))

    def _start_munged(self) -> None:
        if not self.munge_key.exists():
            self._launch("mungekey", ["mungekey", "-c", "-k", str(self.munge_key)])
        os.chmod(self.munge_key, 0o600)
        self.munge_socket.unlink(missing_ok=True)
        self._start_daemon("munged", [
            "munged", "--force", f"--key-file={self.munge_key}", f"--socket={self.munge_socket}",
            f"--log-file={self.log_path('munged')}", f"--pid-file={self.pid_path('munged')}",
            f"--seed-file={self.root / 'munge' / 'munged.seed'}",
        ])
        self._wait_for(self.munge_socket.exists, "munged to create its socket", "munged")

    def _launch(self, name: str, argv: list[str]) -> None:
        """Run a command that returns quickly (a daemon forks into the background). Its output goes to a file,
        not a pipe, because a daemon could keep a pipe open and block us."""
        out = self.root / "log" / f"{name}.launch.log"
        limit = self._time_left()
        try:
            with open(out, "w") as sink:
                result = subprocess.run(argv, env=self.env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                                        timeout=limit, cwd=self.root)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{shlex.join(argv)} did not return within {limit:.0f} s (start timeout)\n"
                               f"{_log_tail(out)}\n{_log_tail(self.log_path(name))}") from None
        if result.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} exited with status {result.returncode}\n"
                               f"{_log_tail(out)}\n{_log_tail(self.log_path(name))}")

    def _start_daemon(self, name: str, argv: list[str]) -> None:
        self.pid_path(name).unlink(missing_ok=True)
        self._launch(name, argv)
        self._wait_for(lambda: self._daemon_pid(name) is not None, f"{name} to write its pid file", name)

    def _time_left(self) -> float:
        """Seconds left of the timeout given to start(), at least one."""
        return max(1.0, self._deadline - time.monotonic())

    def _wait_for(self, ready, what: str, daemon: str) -> None:
        deadline = min(self._deadline, time.monotonic() + 15)
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what} (cluster {self.root})\n"
                                   f"{_log_tail(self.log_path(daemon))}")
            time.sleep(0.02)

    def _wait_node_idle(self) -> None:
        """Poll sinfo until the node reports idle; fail early, with the log, if a daemon has died."""
        last = ""
        while True:
            result = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", check=False, timeout=10)
            last = (result.stdout + result.stderr).strip()
            if result.returncode == 0 and last.rstrip("*~#$@+-") == "idle":
                return
            for name in ("munged", "slurmctld", "slurmd"):
                if self._daemon_pid(name) is None:
                    raise RuntimeError(f"{name} died while the cluster at {self.root} was starting\n"
                                       f"{_log_tail(self.log_path(name))}")
            if time.monotonic() > self._deadline:
                raise RuntimeError(f"node {self.node} of the cluster at {self.root} is not idle in time; sinfo "
                                   f"says: {last or '(nothing)'}\n{_log_tail(self.log_path('slurmctld'))}\n"
                                   f"{_log_tail(self.log_path('slurmd'))}")
            time.sleep(0.05)

    # -------------------------------------------------------------------------------------- processes

    def _owns(self, pid: int, daemon: str) -> bool:
        """Whether pid is `daemon` of this cluster: the right name and our config or munge key on its command line."""
        if not _is_running(pid) or _comm(pid) != daemon:
            return False
        ours = (str(self.conf_path), str(self.munge_key))
        return any(arg in ours or arg.endswith(tuple("=" + p for p in ours)) for arg in _cmdline(pid))

    def _daemon_pid(self, daemon: str) -> int | None:
        """The running pid of one daemon, from its pid file, checked against /proc so a reused pid never counts."""
        try:
            pid = int(self.pid_path(daemon).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if self._owns(pid, daemon) else None

    def daemon_pids(self) -> dict[str, int]:
        """{daemon name: pid} of this cluster's running daemons, from pid files and, as a fallback, /proc."""
        found = {name: pid for name in STOP_ORDER if (pid := self._daemon_pid(name)) is not None}
        for pid in _all_pids():
            name = _comm(pid)
            if name in STOP_ORDER and name not in found and self._owns(pid, name):
                found[name] = pid
        return found

    def _is_our_stepd(self, pid: int) -> bool:
        """slurmstepd's command line names only the step, but it runs with SLURM_CONF set to our config."""
        if _comm(pid) != "slurmstepd" or not _is_running(pid):
            return False
        return _environ(pid).get("SLURM_CONF") == str(self.conf_path)

    def job_processes(self) -> dict[int, str]:
        """{pid: name} of this cluster's slurmstepd processes and everything they started."""
        stepds = {pid for pid in _all_pids() if self._is_our_stepd(pid)}
        return {pid: _comm(pid) for pid in stepds | _descendants(stepds)}

    # -------------------------------------------------------------------------------------- stop

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged. Safe to call at any time, any number of times.

        Whatever survives the cancellation (slurmstepd and job processes) is killed; each daemon gets SIGTERM,
        then SIGKILL if it lingers, and each pid is re-checked before every signal.
        """
        daemons = self.daemon_pids()
        try:
            if "slurmctld" in daemons and "munged" in daemons:
                self._cancel_all_jobs()
            self._kill_job_processes()
        finally:
            for name in STOP_ORDER:
                if name in daemons:
                    self._terminate(name, daemons[name])
                self.pid_path(name).unlink(missing_ok=True)

    def _active_job_ids(self) -> list[str]:
        """Ids of the jobs squeue lists by default: pending, running, completing and the like."""
        return sorted(set(self.run("squeue", "-h", "-o", "%A", check=False, timeout=10).stdout.split()))

    def _cancel_all_jobs(self) -> None:
        """scancel every job the controller knows, then give slurmd a few seconds to clean up the steps."""
        try:
            ids = self._active_job_ids()
            if not ids:
                return
            self.run("scancel", *ids, check=False, timeout=10)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (self._active_job_ids() or self.job_processes()):
                time.sleep(0.1)
        except subprocess.TimeoutExpired:
            pass  # the controller does not answer; _kill_job_processes() deals with the steps directly

    def _kill_job_processes(self) -> None:
        procs = self.job_processes()
        for pid, name in procs.items():
            _signal_if(pid, signal.SIGKILL, name)
        left = _wait_gone(procs, 5)
        if left:
            raise RuntimeError(f"job processes of the cluster at {self.root} survived SIGKILL: "
                               f"{ {pid: procs[pid] for pid in left} }")

    def _terminate(self, name: str, pid: int) -> None:
        _signal_if(pid, signal.SIGTERM, name)
        if not _wait_gone([pid], 10):
            return
        _signal_if(pid, signal.SIGKILL, name)
        if _wait_gone([pid], 5):
            raise RuntimeError(f"{name} (pid {pid}) of the cluster at {self.root} did not exit after SIGKILL\n"
                               f"{_log_tail(self.log_path(name))}")


# --------------------------------------------------------------------------------------------------- CLI

def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start or stop a private single-node SLURM cluster under DIR.")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start it and print `export SLURM_CONF=...` for the shell")
    start.add_argument("dir")
    start.add_argument("--gpus", type=int, default=4)
    start.add_argument("--cpus", type=int, default=8)
    start.add_argument("--memory-mb", type=int, default=16000)
    start.add_argument("--partition", default="debug")
    start.add_argument("--timeout", type=float, default=60)
    stop = commands.add_parser("stop", help="cancel all jobs and stop the daemons")
    stop.add_argument("dir")
    args = parser.parse_args(argv)

    if args.command == "stop":
        LocalSlurm(args.dir).stop()
        return 0
    ok, why = is_available()
    if not ok:
        print(f"cannot start a local SLURM cluster: {why}", file=sys.stderr)
        return 1
    cluster = LocalSlurm(args.dir, gpus=args.gpus, cpus=args.cpus, memory_mb=args.memory_mb,
                         partition=args.partition).start(timeout=args.timeout)
    print(f"export SLURM_CONF={shlex.quote(str(cluster.conf_path))}")
    print(f"# node {cluster.node}, ports {cluster.ports[0]}/{cluster.ports[1]}; stop with: "
          f"python {shlex.quote(sys.argv[0])} stop {shlex.quote(str(cluster.root))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
