"""Is the study directory on storage the compute nodes share? Checked before
anything is submitted: tasks write their results there."""

from __future__ import annotations

import socket
from pathlib import Path

# file systems that are (or usually are) mounted on every node of a cluster
SHARED_FS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "cifs", "smb3", "smbfs", "panfs",
             "pvfs2", "orangefs", "glusterfs", "wekafs", "9p", "afs", "vast"}


def filesystem_type(path: Path) -> str:
    """The type of the mount holding `path`, from /proc/mounts (longest matching mount point)."""
    path = path.resolve()
    best, fstype = "", "unknown"
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return fstype
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, parts[2]
    return fstype


def local_only_problem(study_dir: Path, nodes: list[str]) -> str | None:
    """Why the nodes may not see `study_dir`, or None. A local file system is fine
    when the only node is this machine (a single-node cluster)."""
    fstype = filesystem_type(study_dir)
    if fstype in SHARED_FS or fstype.startswith("fuse"):
        return None
    here = {socket.gethostname(), socket.getfqdn(), "localhost"}
    if nodes and all(n in here for n in nodes):
        return None
    return (f"the study directory {study_dir} is on a local file system ({fstype}) but the runs execute on "
            f"other nodes ({', '.join(nodes[:5]) or 'unknown'}); put results on storage the nodes share "
            "with -o (e.g. a project or scratch directory), or set slurm.shared_storage_check: false if it is shared")
