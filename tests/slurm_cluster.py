"""A real one-node SLURM cluster for the tests, started under a temp folder and stopped by PID.

Needs root and Debian's ``slurm-wlm munge`` (``slurmdbd mariadb-server`` with accounting);
``scripts/setup.sh`` installs them when run as root. :func:`unavailable` says why a test must skip.
No systemd and no cgroups: ``proctrack/linuxproc``, ``task/none``, ``jobacct_gather/none``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ["munged", "slurmctld", "slurmd"]
ACCOUNTING = ["slurmdbd", "mariadbd", "mariadb-install-db"]


def unavailable(accounting: bool = False) -> str | None:
    """Why a cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (SlurmUser=root)"
    missing = [name for name in DAEMONS + ["sbatch", "squeue", "scancel", "sinfo", "mungekey"] + (ACCOUNTING if accounting else [])
               if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): run scripts/setup.sh as root, or apt-get install slurm-wlm munge slurmdbd mariadb-server"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class LocalSlurm:
    """munged + slurmctld + slurmd (+ MariaDB + slurmdbd with ``accounting``) on this machine."""

    def __init__(self, root: Path, accounting: bool = False):
        self.root = root
        self.accounting = accounting
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self.memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20) - 2048
        self.processes: dict[str, subprocess.Popen] = {}
        self.pids: dict[str, Path] = {}

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.root / "slurm.conf")}

    def run(self, *command: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(command), env=dict(os.environ, **self.env), capture_output=True, text=True, timeout=timeout, check=check)

    # -- start ------------------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> "LocalSlurm":
        try:
            self.start_munge()
            if self.accounting:
                self.start_database()
                self.start_slurmdbd()
            self.write_slurm_conf()
            self.daemon("slurmctld", binary("slurmctld"), "-D", "-f", str(self.root / "slurm.conf"))
            self.daemon("slurmd", binary("slurmd"), "-D", "-f", str(self.root / "slurm.conf"), "-N", self.host)
            self.wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_munge(self) -> None:
        keys, sockets = self.root / "munge-key", self.root / "munge"
        keys.mkdir(mode=0o700, parents=True)
        sockets.mkdir(mode=0o755, parents=True)
        subprocess.run([binary("mungekey"), "--create", f"--keyfile={keys / 'munge.key'}"], check=True, capture_output=True)
        os.chmod(keys / "munge.key", 0o600)
        self.munge_socket = sockets / "munge.socket"
        self.daemon("munged", binary("munged"), "--foreground", "--force", f"--socket={self.munge_socket}",
                    f"--key-file={keys / 'munge.key'}", f"--pid-file={sockets / 'munged.pid'}",
                    f"--log-file={self.root / 'munged.log'}", f"--seed-file={sockets / 'munged.seed'}")
        self.wait_for(lambda: self.munge_socket.exists(), 10, "munged's socket")

    def start_database(self) -> None:
        data, run = self.root / "mysql", self.root / "mysqld"
        run.mkdir()
        subprocess.run([binary("mariadb-install-db"), f"--datadir={data}", "--user=root", "--auth-root-authentication-method=socket",
                        "--skip-test-db"], check=True, capture_output=True, timeout=120)
        self.db_socket = run / "mysqld.sock"
        self.daemon("mariadbd", binary("mariadbd"), "--no-defaults", f"--datadir={data}", f"--socket={self.db_socket}",
                    "--skip-networking", "--user=root", f"--pid-file={run / 'mysqld.pid'}", f"--log-error={self.root / 'mariadb.log'}")
        self.wait_for(lambda: self.db_socket.exists(), 60, "MariaDB's socket")

    def start_slurmdbd(self) -> None:
        self.dbd_port = free_port()
        conf = self.root / "slurmdbd.conf"
        conf.write_text("\n".join([
            "AuthType=auth/munge", f"AuthInfo=socket={self.munge_socket}", "DbdHost=localhost", f"DbdPort={self.dbd_port}",
            "SlurmUser=root", f"LogFile={self.root / 'slurmdbd.log'}", f"PidFile={self.root / 'slurmdbd.pid'}",
            "StorageType=accounting_storage/mysql", "StorageHost=localhost", f"StorageLoc=slurm_acct_db",
            "StorageUser=root", f"StoragePort=3306", f"StorageParameters=SSL_CA=", "",
        ]))
        # MariaDB is reached through its socket: point the client library at it
        (self.root / "my.cnf").write_text(f"[client]\nsocket={self.db_socket}\n")
        os.chmod(conf, 0o600)
        self.daemon("slurmdbd", binary("slurmdbd"), "-D", env={"SLURM_CONF": str(self.root / "slurm.conf"), "SLURMDBD_CONF": str(conf),
                                                                "MYSQL_UNIX_PORT": str(self.db_socket), "MARIADB_UNIX_PORT": str(self.db_socket)})
        self.wait_for(lambda: self.port_open(self.dbd_port), 60, "slurmdbd")

    def write_slurm_conf(self) -> None:
        ctld, slurmd = free_port(), free_port()
        accounting = ["AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=localhost",
                      f"AccountingStoragePort={self.dbd_port}", f"AccountingStoragePass={self.munge_socket}"] \
            if self.accounting else ["AccountingStorageType=accounting_storage/none"]
        for folder in ("state", "spool"):
            (self.root / folder).mkdir(exist_ok=True)
        lines = [
            "ClusterName=prunetest", f"SlurmctldHost={self.host}", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", f"AuthInfo=socket={self.munge_socket}", "CredType=cred/munge",
            f"SlurmctldPort={ctld}", f"SlurmdPort={slurmd}",
            f"StateSaveLocation={self.root / 'state'}", f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}", f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'slurmctld.log'}", f"SlurmdLogFile={self.root / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory", "SchedulerType=sched/backfill",
            "KillWait=5", "MinJobAge=300", "ReturnToService=2", "MpiDefault=none", "JobCompType=jobcomp/none",
            "SlurmctldTimeout=30", "SlurmdTimeout=30", "InactiveLimit=0", "Waittime=0",
            *accounting,
            f"NodeName={self.host} CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
        (self.root / "slurm.conf").write_text("\n".join(lines))

    def daemon(self, name: str, *command: str, env: dict | None = None) -> None:
        log = open(self.root / f"{name}.out", "wb")
        self.processes[name] = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                                env=dict(os.environ, **(env or self.env)))

    @staticmethod
    def port_open(port: int) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while not predicate():
            dead = [name for name, process in self.processes.items() if process.poll() is not None]
            if dead or time.time() > deadline:
                logs = {name: (self.root / f"{name}.out").read_text(errors="replace")[-800:] for name in self.processes}
                raise RuntimeError(f"{what} did not come up ({'exited: ' + ', '.join(dead) if dead else 'timeout'}): {logs}")
            time.sleep(0.1)

    def wait_idle(self, timeout: float) -> None:
        def idle() -> bool:
            result = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
            return result.returncode == 0 and result.stdout.strip().startswith("idle")

        self.wait_for(idle, timeout, "the node (idle in sinfo)")

    # -- stop -------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel every job, then stop every daemon by PID (SIGTERM, then SIGKILL)."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user=root", check=False)
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        self.processes.clear()

    def jobs(self) -> list[str]:
        """``squeue`` lines (job id, state) of every job still known to the controller."""
        return self.run("squeue", "-h", "-o", "%i %T", check=False).stdout.split("\n")
