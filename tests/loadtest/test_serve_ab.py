"""serve_ab's per-process CPU split: roles from Ray's process titles, CPU read for one session only."""

import subprocess
import sys
import time

from loadtest.serve_ab import process_role, session_cpu


def test_process_roles_name_the_hop():
    assert process_role("ray::ServeReplica:turnout:EmbeddingDeployment", "ray::ServeRepli") == "EmbeddingDeployment"
    assert process_role("ray::ProxyActor", "ray::ProxyActor") == "ProxyActor"
    assert process_role("ray::ServeController.listen_for_change", "ray::ServeContr") == "ServeController.listen_for_change"
    assert process_role("/opt/ray/raylet --raylet_socket_name=/tmp/x", "raylet") == "raylet"


def test_session_cpu_counts_a_busy_child_of_its_session_only():
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", busy], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and session_cpu(child.pid).get("python", 0.0) < 0.5:
            time.sleep(0.2)
        assert session_cpu(child.pid).get("python", 0.0) >= 0.5
        assert session_cpu(child.pid).keys() == {"python"}  # nothing of this (the test's) session
    finally:
        child.kill()
        child.wait()
