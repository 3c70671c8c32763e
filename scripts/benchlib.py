"""Helpers shared by the benchmark scripts."""
import os


def physical_cores():
    """Physical cores of this machine (the thread count both engines get)."""
    cores = set()
    package = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "physical id":
                    package = value
                elif key == "core id":
                    cores.add((package, value))
    except OSError:
        pass
    return min(len(cores), os.cpu_count() or 1) if cores else (os.cpu_count() or 1)
