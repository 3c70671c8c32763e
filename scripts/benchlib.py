"""Helpers shared by the benchmark scripts."""
import http.client
import os
import subprocess
import sys
import time


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


def percentile(values, p):
    """The p-th percentile of `values`, interpolated."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Server:
    """A server process, started with its output in `log`, once its
    `ready_path` answers 200."""

    def __init__(self, name, argv, port, ready_path, log):
        self.name, self.port, self.ready_path = name, port, ready_path
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{name} exited while starting: see {log.name}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", ready_path)
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        sys.exit(f"{name} did not become ready")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
