"""A real single-node Slurm cluster in a temporary directory, for the `slurm` tests.

It installs nothing: Debian's `slurm-wlm` and `munge` must be present (`.ci/run`
installs them). munged, slurmctld and slurmd run in the foreground as children of
the test session, on free ports, with their state, logs and the job-completion
file under one directory; clients find it through SLURM_CONF.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

NODE = "localhost"
PARTITION = "debug"


def unavailable_reason() -> str | None:
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol") if shutil.which(t) is None]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing); apt-get install slurm-wlm munge (.ci/run does)"
    if os.geteuid() != 0:
        return "the test cluster runs slurmd as root (it starts jobs as any user); run the tests as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> str:
    """The machine's real CPUs and memory, as slurmd itself reports them."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(kv.split("=", 1) for kv in out.split()[:8] if "=" in kv)
    cpus, mem = fields.get("CPUs", "1"), fields.get("RealMemory", "1024")
    return f"NodeName={NODE} CPUs={cpus} RealMemory={mem} State=UNKNOWN"


class SlurmCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.jobcomp = root / "jobcomp.txt"
        self.procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _start(self, argv: list[str], log: str) -> None:
        with open(self.root / log, "ab") as f:
            self.procs.append(subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True,
                                               env={**os.environ, **self.env}))

    def start(self, timeout_s: float = 30) -> SlurmCluster:
        r = self.root
        for d in ("munge", "state", "spool"):
            (r / d).mkdir(parents=True, exist_ok=True)
        # munged refuses a socket directory others can't traverse, and a readable key
        os.chmod(r, 0o755)
        os.chmod(r / "munge", 0o755)
        key = r / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = r / "munge" / "munge.socket.2"
        self._start(["munged", "-F", "--force", f"--socket={sock}", f"--key-file={key}",
                     f"--pid-file={r / 'munged.pid'}", f"--seed-file={r / 'munged.seed'}",
                     f"--log-file={r / 'munged.log'}"], "munged.out")
        self.conf.write_text(f"""\
ClusterName=llemtest
SlurmctldHost={NODE}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'slurmctld.log'}
SlurmdLogFile={r / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
# quick time-limit kills and finished jobs kept visible to scontrol for a while
KillWait=2
MinJobAge=1800
{_node_line()}
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""")
        for _ in range(50):
            if sock.exists():
                break
            time.sleep(0.1)
        self._start(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld.out")
        self._start(["slurmd", "-D", "-N", NODE, "-f", str(self.conf)], "slurmd.out")
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env={**os.environ, **self.env})
            if p.returncode == 0 and p.stdout.strip() in ("idle", "mixed", "allocated"):
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the test Slurm cluster did not come up in {timeout_s} s; logs in {r}:\n"
                           + self.logs())

    def logs(self) -> str:
        out = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            p = self.root / name
            if p.exists():
                out.append(f"== {name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "-u", "root"], capture_output=True, env={**os.environ, **self.env})
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
