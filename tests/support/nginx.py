"""nginx in front of a live platform, configured with the README's snippet as written.

The snippet between the ``nginx-front`` markers in ``README.md`` is read at test time and
only its placeholders (listen address, certificates, the gunicorn address) are replaced,
so a change to the documented configuration is a change to what the tests run. TLS uses
a throwaway CA made with ``openssl``; clients verify against its ``ca.crt``.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import socket
import subprocess
from pathlib import Path

from .processes import LiveProcess, ProcessFactory, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
_SNIPPET = re.compile(
    r"<!-- nginx-front:begin -->\s*```nginx\n(?P<body>.*?)```\s*<!-- nginx-front:end -->",
    re.DOTALL,
)
#: The README's placeholders; each must occur exactly once in the snippet.
LISTEN = "listen 443 ssl;"
CERTIFICATE = "/etc/nginx/tls/registry.crt"
CERTIFICATE_KEY = "/etc/nginx/tls/registry.key"
BACKEND = "server 127.0.0.1:8000;"


def readme_snippet() -> str:
    """The nginx configuration the README documents for a TLS front."""
    found = _SNIPPET.search((REPO_ROOT / "README.md").read_text())
    if found is None:
        raise AssertionError("README.md has no ```nginx block between the nginx-front markers")
    return found.group("body")


def _replace_once(text: str, placeholder: str, value: str) -> str:
    count = text.count(placeholder)
    if count != 1:
        raise AssertionError(f"the README's nginx snippet has {placeholder!r} {count} times")
    return text.replace(placeholder, value)


@dataclasses.dataclass(frozen=True)
class Certificates:
    """A CA and a server certificate for 127.0.0.1 signed by it.

    ``cert_dir`` holds only ``ca.crt``: the layout skopeo's and podman's ``--cert-dir`` read.
    """

    cert_dir: Path
    certificate: Path
    key: Path

    @property
    def ca(self) -> Path:
        return self.cert_dir / "ca.crt"


def make_certificates(directory: Path) -> Certificates:
    """Run ``openssl`` to make a CA (in ``directory/ca/ca.crt``) and a server certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_dir = directory / "ca"
    cert_dir.mkdir(exist_ok=True)
    ca_key = directory / "ca.key"
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName = IP:127.0.0.1\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
    )

    def openssl(*args: str | Path) -> None:
        subprocess.run(
            ["openssl", *map(str, args)],
            check=True,
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
        "-subj", "/CN=flask-dependency-proxy test CA",
        "-keyout", ca_key, "-out", cert_dir / "ca.crt",
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj", "/CN=127.0.0.1",
        "-keyout", directory / "server.key", "-out", directory / "server.csr",
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", directory / "server.csr", "-CA", cert_dir / "ca.crt",
        "-CAkey", ca_key, "-CAcreateserial", "-days", "2", "-sha256",
        "-extfile", extensions, "-out", directory / "server.crt",
    )  # fmt: skip
    return Certificates(cert_dir, directory / "server.crt", directory / "server.key")


def render_config(run_dir: Path, port: int, backend_port: int, certs: Certificates) -> str:
    """A complete ``nginx.conf``: the README's snippet inside an ``http`` block whose
    pid, logs and temporary folders stay in ``run_dir``."""
    snippet = readme_snippet()
    snippet = _replace_once(snippet, LISTEN, f"listen 127.0.0.1:{port} ssl;")
    snippet = _replace_once(snippet, CERTIFICATE, str(certs.certificate))
    snippet = _replace_once(snippet, CERTIFICATE_KEY, str(certs.key))
    snippet = _replace_once(snippet, BACKEND, f"server 127.0.0.1:{backend_port};")
    temp = {name: run_dir / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for folder in temp.values():
        folder.mkdir(parents=True, exist_ok=True)
    return (
        "daemon off;\n"
        # Workers keep root's rights: the test's folders are private to root.
        "user root;\n"
        "worker_processes 1;\n"
        f"pid {run_dir / 'nginx.pid'};\n"
        "error_log stderr info;\n"
        "events { worker_connections 512; }\n"
        "http {\n"
        "    access_log /dev/stdout;\n"
        + "".join(f"    {name}_temp_path {path};\n" for name, path in temp.items())
        + snippet
        + "}\n"
    )


class NginxFront:
    """nginx on ``https://127.0.0.1:PORT`` in front of gunicorn on ``backend_port``."""

    def __init__(
        self, processes: ProcessFactory, run_dir: Path, backend_port: int, certs: Certificates
    ) -> None:
        if shutil.which("nginx") is None:
            raise AssertionError("nginx is not installed (scripts/test installs nginx-light)")
        run_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.certs = certs
        self.config_path = run_dir / "nginx.conf"
        self.config_path.write_text(render_config(run_dir, self.port, backend_port, certs))
        self.process: LiveProcess = processes.create(
            "nginx", ["nginx", "-e", "stderr", "-p", str(run_dir), "-c", str(self.config_path)]
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def start(self) -> NginxFront:
        def answers() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                return True

        self.process.start(ready=answers, timeout=30)
        return self

    def stop(self) -> None:
        self.process.stop()
