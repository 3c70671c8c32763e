"""Helpers shared by the scripts that drive a real `lampo serve` with the
official openai Python SDK: the SDK's virtual environment, starting the
server and stopping it."""
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENV = os.path.join(ROOT, "target", "sdk-venv")
PACKAGES = ["openai==3.57.0", "schemathesis==4.32.5", "jsonschema==4.25.1"]


def ensure_sdk():
    """The venv's python, with PACKAGES installed on first use."""
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    if subprocess.run([py, "-c", "import openai, schemathesis, jsonschema"], capture_output=True).returncode != 0:
        subprocess.run([py, "-m", "pip", "install", "-q", *PACKAGES], check=True)
    return py


def build():
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "lampo-cli"], cwd=ROOT, check=True)


def start_server(model, *args):
    """Starts `lampo serve -m MODEL ARGS` on a free port; returns the process
    (its log lines in `.log`) and its base URL once it is ready."""
    lampo = os.path.join(ROOT, "target", "release", "lampo")
    proc = subprocess.Popen([lampo, "serve", "-m", model, "--port", "0", "--model-alias", model, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = None
    for line in proc.stdout:
        m = re.search(r"on (http://[0-9.:]+)", line)
        if m:
            base = m.group(1)
            break
    if not base:
        sys.exit("lampo serve did not say where it listens")
    # Keep reading its log so a full pipe never blocks the server.
    log = []
    threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True).start()
    proc.log = log
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(base + "/ready") as r:
                if r.status == 200:
                    return proc, base
        except Exception:
            time.sleep(0.2)
    sys.exit("lampo serve never became ready")


def stop_server(proc):
    """SIGTERM, and fails unless the server exits cleanly within 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        sys.exit("lampo serve did not stop within 30 s of SIGTERM")
    if proc.returncode != 0:
        sys.exit(f"lampo serve exited with {proc.returncode} after SIGTERM:\n{''.join(proc.log[-20:])}")
