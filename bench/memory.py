"""Peak memory of the running process, for the benchmark scripts beside this file."""

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    VmHWM, not getrusage's ru_maxrss: Linux carries the parent's RSS at fork into the child's
    ru_maxrss across exec, so a child of a large generator would report the generator's memory.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; elsewhere approximate
