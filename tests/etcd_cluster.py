"""Real etcd clusters on loopback for integration tests and benches.

``EtcdCluster(size=3)`` starts Debian's ``/usr/bin/etcd`` members on free
127.0.0.1 ports with temporary data directories, waits until each member
answers ``/health`` (a condition with a deadline, not a sleep), and can
SIGKILL and restart single members. ``stop()`` kills every member and removes
the data directories; use it as a context manager so nothing is left running.

Fast timing (``--heartbeat-interval 50 --election-timeout 250``) is the
default: etcd then grants 1 s leases (it raises shorter TTLs to
1.5 x election timeout) and elects a new raft leader in ~0.3 s.

Optional TLS: pass ``tls=TlsFiles(...)`` (see ``make_tls_files``) and the
client URLs become https with client-certificate authentication.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.conftest import etcd_binary, free_port


class EtcdClusterError(Exception):
    """A member did not start or did not become healthy in time."""


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throw-away CA, a server certificate for IP 127.0.0.1 and a client certificate (openssl CLI)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subj in (("server", "/CN=127.0.0.1"), ("client", "/CN=nfv-doctor")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", subj, "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
    return TlsFiles(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """1..N etcd members on loopback; a context manager that always cleans up."""

    def __init__(self, size: int = 1, *, fast: bool = True, tls: TlsFiles | None = None,
                 binary: str | None = None, start_timeout_s: float = 20.0, extra_args: tuple[str, ...] = ()) -> None:
        binary = binary or etcd_binary()
        if binary is None:
            raise EtcdClusterError("etcd is not installed (apt-get install etcd-server)")
        self.binary = binary
        self.size = size
        self.fast = fast
        self.tls = tls
        self.start_timeout_s = start_timeout_s
        self.extra_args = extra_args
        self.root = Path(tempfile.mkdtemp(prefix="nfv-doctor-etcd-"))
        self.members: list[Member] = []
        self.token = f"nfv-doctor-test-{os.getpid()}-{id(self):x}"

    # -- life cycle -----------------------------------------------------------
    def __enter__(self) -> "EtcdCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """Start every member on fresh ports; retry with new ports if one lost a port race (bounded)."""
        last: Exception | None = None
        for attempt in range(3):
            self._layout(attempt)
            try:
                for i in range(self.size):
                    self._spawn(i, new=True)
                self.wait_healthy(timeout_s=self.start_timeout_s)
                return
            except EtcdClusterError as exc:
                last = exc
                self._kill_all()
        raise EtcdClusterError(f"cluster did not start after 3 attempts: {last}")

    def stop(self) -> None:
        self._kill_all()
        shutil.rmtree(self.root, ignore_errors=True)

    def _layout(self, attempt: int) -> None:
        self.members = []
        for i in range(self.size):
            d = self.root / f"a{attempt}" / f"m{i}"
            d.mkdir(parents=True)
            self.members.append(Member(f"m{i}", free_port(), free_port(), d / "data", d / "etcd.log"))

    def _scheme(self) -> str:
        return "https" if self.tls else "http"

    def _spawn(self, i: int, *, new: bool) -> None:
        m = self.members[i]
        initial = ",".join(f"{o.name}=http://127.0.0.1:{o.peer_port}" for o in self.members)
        client_url = f"{self._scheme()}://127.0.0.1:{m.client_port}"
        args = [
            self.binary, "--name", m.name, "--data-dir", str(m.data_dir),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", f"http://127.0.0.1:{m.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{m.peer_port}",
            "--initial-cluster", initial, "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--logger", "zap", "--log-level", "warn", "--log-outputs", "stderr",
        ]
        if self.fast:
            args += ["--heartbeat-interval", "50", "--election-timeout", "250"]
        args += self.extra_args
        if self.tls:
            args += ["--cert-file", str(self.tls.server_cert), "--key-file", str(self.tls.server_key),
                     "--trusted-ca-file", str(self.tls.ca_file), "--client-cert-auth"]
        # die with this process even if it is SIGKILLed (a timeout, a crashed test): no etcd left behind
        setpriv = shutil.which("setpriv")
        if setpriv:
            args = [setpriv, "--pdeathsig", "KILL", "--", *args]
        with open(m.log_path, "ab") as log:
            m.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def _kill_all(self) -> None:
        for m in self.members:
            self._kill(m)

    @staticmethod
    def _kill(m: Member) -> None:
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(signal.SIGKILL)
        if m.proc is not None:
            m.proc.wait(timeout=10)
        m.proc = None

    # -- fault injection ------------------------------------------------------
    def kill(self, i: int) -> None:
        """SIGKILL member i (its data directory stays, so ``restart(i)`` rejoins)."""
        self._kill(self.members[i])

    def restart(self, i: int, *, wait: bool = True, timeout_s: float = 15.0) -> None:
        """Start a killed member again with its data; wait until it answers /health when ``wait``."""
        if self.members[i].running:
            raise EtcdClusterError(f"member {i} is running")
        self._spawn(i, new=False)
        if wait:
            self.wait_healthy([i], timeout_s=timeout_s)

    # -- observation ----------------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=str(self.tls.ca_file))
        ctx.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return ctx

    def _http(self, i: int, path: str, body: bytes | None = None, timeout_s: float = 1.0) -> dict[str, object]:
        url = f"{self._scheme()}://{self.members[i].endpoint}{path}"
        with urllib.request.urlopen(url, data=body, timeout=timeout_s, context=self._ssl()) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def healthy(self, i: int) -> bool:
        """Member i runs and answers a linearizable read (so it has a raft leader and a quorum).

        Not ``/health``: on a new 3.4 cluster that answers only ~2 s after the
        first raft leader, while reads are served after ~0.1 s.
        """
        if not self.members[i].running:
            return False
        try:
            return "header" in self._http(i, "/v3/kv/range", b'{"key": "aGVhbHRo"}', timeout_s=0.5)
        except urllib.error.HTTPError as exc:
            if b"user name is empty" not in exc.read():
                return False
        except (OSError, ValueError):
            return False
        try:  # etcd authentication is on: settle for "serving, and it knows a raft leader"
            return int(self._http(i, "/v3/maintenance/status", b"{}", timeout_s=0.5).get("leader", 0)) != 0  # type: ignore[call-overload]
        except (OSError, ValueError):
            return False

    def wait_healthy(self, members: list[int] | None = None, *, timeout_s: float = 15.0) -> None:
        members = list(range(self.size)) if members is None else members
        deadline = time.monotonic() + timeout_s
        while True:
            for i in members:
                m = self.members[i]
                if m.proc is None or m.proc.poll() is not None:
                    tail = m.log_path.read_text(errors="replace")[-2000:] if m.log_path.exists() else ""
                    raise EtcdClusterError(f"member {m.name} exited:\n{tail}")
            if all(self.healthy(i) for i in members):
                return
            if time.monotonic() > deadline:
                raise EtcdClusterError(f"members {members} not healthy within {timeout_s}s")
            time.sleep(0.05)  # polling interval of a condition with a deadline

    def leader(self) -> int:
        """Index of the member that is etcd's raft leader (asks the running members)."""
        ids: dict[int, int] = {}
        leader_id = None
        for i, m in enumerate(self.members):
            if not m.running:
                continue
            try:
                st = self._http(i, "/v3/maintenance/status", b"{}")
            except (OSError, ValueError, urllib.error.URLError):
                continue
            ids[int(st["header"]["member_id"])] = i  # type: ignore[index]
            leader_id = int(st.get("leader", 0))  # type: ignore[arg-type]
        if leader_id is None or leader_id not in ids:
            raise EtcdClusterError("no raft leader among the running members")
        return ids[leader_id]
