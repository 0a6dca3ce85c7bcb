"""A real Kubernetes control plane on 127.0.0.1, as plain processes (the way controller-runtime's
envtest and `kwokctl --runtime binary` run one), for the real-cluster tests and benches:

- etcd; kube-apiserver with RBAC (and Node) authorization, ServiceAccount token issuing, a
  client-certificate admin in `system:masters`, the OwnerReferencesPermissionEnforcement admission
  plugin, and an audit log of every request (`audit_events`);
- kube-controller-manager (Deployment, ReplicaSet, EndpointSlice, garbage-collector, ServiceAccount
  token and namespace controllers, each under its own ServiceAccount), kube-scheduler;
- the KWOK controller, which keeps nodes annotated `kwok.x-k8s.io/node: fake` Ready and makes the
  pods the scheduler binds to them Running and Ready (no container runs).

Binaries come from `e2e/build.sh` (built once per set of versions into a cache outside the
checkout). Every process gets SIGKILL when the process that started it dies, and `stop()` ends
them all, so nothing is left running.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests
import yaml

from melange.testing.gpu_nodes import SHAPES, kwok_node
from melange.testing.ports import free_port, wait_for_http_ok

REPOSITORY = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPOSITORY / "e2e" / "build.sh"
VERSIONS = REPOSITORY / "e2e" / "versions.env"
SERVICE_CIDR = "10.96.0.0/16"
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [{"level": "Metadata"}],
}


class ClusterError(RuntimeError):
    """The control plane could not be built or started; the message holds the command and its output."""


def build_binaries(timeout_s: float = 3600) -> Path:
    """The folder of the pinned binaries, built by e2e/build.sh when missing (its progress goes to
    stderr; the first build takes tens of minutes on two cores)."""
    if shutil.which("go") is None:
        raise ClusterError("the real-cluster tests build Kubernetes from the Go module proxy: install Go >= 1.26")
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=None, text=True,
                            timeout=timeout_s)
    if result.returncode != 0:
        raise ClusterError(f"{BUILD_SCRIPT} failed (exit {result.returncode}); its output is above")
    return Path(result.stdout.strip().splitlines()[-1])


def pinned_versions() -> dict[str, str]:
    """The `NAME=value` lines of e2e/versions.env."""
    pairs = (line.split("=", 1) for line in VERSIONS.read_text().splitlines()
             if "=" in line and not line.lstrip().startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass
    os.setsid()  # a terminal's Ctrl-C reaches pytest, which then stops the cluster in order


def _run(args: Sequence[str], **kwargs: Any) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise ClusterError(f"{' '.join(map(str, args))} failed (exit {result.returncode}):\n"
                           f"{result.stdout}{result.stderr}")
    return result.stdout


class _Certificates:
    """A throw-away CA, the API server's serving certificate, the admin's client certificate and
    the ServiceAccount signing key pair, made with the openssl command."""

    def __init__(self, folder: Path) -> None:
        if shutil.which("openssl") is None:
            raise ClusterError("the openssl command is missing (Debian package openssl)")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ca_crt, self.ca_key = folder / "ca.crt", folder / "ca.key"
        _run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7", "-subj",
              "/CN=melange-e2e-ca", "-keyout", str(self.ca_key), "-out", str(self.ca_crt)])
        self.serving_crt, self.serving_key = self._issue(
            "apiserver", "/CN=kube-apiserver", "serverAuth",
            "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
            "DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1")
        self.admin_crt, self.admin_key = self._issue("admin", "/O=system:masters/CN=melange-e2e-admin", "clientAuth")
        self.sa_key, self.sa_pub = folder / "sa.key", folder / "sa.pub"
        _run(["openssl", "genrsa", "-out", str(self.sa_key), "2048"])
        _run(["openssl", "rsa", "-in", str(self.sa_key), "-pubout", "-out", str(self.sa_pub)])

    def _issue(self, name: str, subject: str, usage: str, alt_names: str | None = None) -> tuple[Path, Path]:
        key, csr, crt, ext = (self.folder / f"{name}.{suffix}" for suffix in ("key", "csr", "crt", "ext"))
        lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
                 f"extendedKeyUsage={usage}"]
        if alt_names:
            lines.append(f"subjectAltName={alt_names}")
        ext.write_text("\n".join(lines) + "\n")
        _run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
              "-keyout", str(key), "-out", str(csr)])
        _run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.ca_crt), "-CAkey", str(self.ca_key),
              "-set_serial", str(int(time.time() * 1000)), "-days", "7", "-extfile", str(ext), "-out", str(crt)])
        return crt, key


def kubeconfig_text(server: str, ca_file: Path, *, token: str | None = None,
                    client_cert: Path | None = None, client_key: Path | None = None,
                    namespace: str = "default", user: str = "user") -> str:
    """A kubeconfig for one server and one user (a bearer token, or a client certificate)."""
    credentials: dict[str, Any] = {"token": token} if token else {
        "client-certificate": str(client_cert), "client-key": str(client_key)}
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user, "namespace": namespace}}],
    })


class LocalCluster:
    """One control plane in a temporary folder. `start()` returns once the API is ready, the
    controllers and scheduler run, and the default ServiceAccount exists; `stop()` ends it all."""

    def __init__(self, bin_dir: Path, folder: Path | None = None) -> None:
        self.bin = Path(bin_dir)
        self.folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="melange-cluster-"))
        self.processes: dict[str, subprocess.Popen] = {}
        self._logs: list[Any] = []
        self.audit_log = self.folder / "audit.log"
        self.kubeconfig = self.folder / "admin.kubeconfig"
        self.port = 0
        self.server = ""
        self.started_s: dict[str, float] = {}

    # --- life cycle ---

    def start(self, timeout_s: float = 90.0) -> LocalCluster:
        """Start every component; raises ClusterError with the failing component's log tail."""
        begin = time.monotonic()
        try:
            self.certs = _Certificates(self.folder / "pki")
            self._start_etcd()
            self._wait_for_etcd(begin + timeout_s)
            self._start_apiserver()
            self._wait_ready(begin + timeout_s)
            self.started_s["api"] = time.monotonic() - begin
            self.kubeconfig.write_text(kubeconfig_text(self.server, self.certs.ca_crt, client_cert=self.certs.admin_crt,
                                                       client_key=self.certs.admin_key, user="admin"))
            self._start_controllers()
            self._wait_for_default_service_account(begin + timeout_s)
            self.started_s["all"] = time.monotonic() - begin
        except BaseException:
            self.stop(keep_folder=True)
            raise
        return self

    def stop(self, keep_folder: bool = False) -> None:
        """Stop the components in the reverse order of their start (SIGTERM, then SIGKILL)."""
        for name, process in reversed(list(self.processes.items())):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if not keep_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "ab")
        self._logs.append(log)
        process = subprocess.Popen([str(a) for a in args], stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=die_with_parent, cwd=self.folder,
                                   env={**os.environ, **(env or {})})
        self.processes[name] = process
        return process

    def log_tail(self, name: str, lines: int = 40) -> str:
        """The last lines a component wrote (for failure messages)."""
        path = self.folder / f"{name}.log"
        if not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise ClusterError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn("etcd", [
            self.bin / "etcd", "--name=e2e", f"--data-dir={self.folder / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=e2e=http://127.0.0.1:{peer}", "--unsafe-no-fsync", "--log-level=warn",
            "--listen-metrics-urls=", "--auto-compaction-retention=1"])

    def _wait_healthy(self, name: str, url: str, deadline: float, **request: Any) -> None:
        """Until `url` answers 200; ClusterError with the last answer and `name`'s log tail at `deadline`."""
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                answer = requests.get(url, timeout=2, **request)
                if answer.status_code == 200:
                    return
                last = answer.text[-500:]
            except requests.RequestException as error:
                last = str(error)
            time.sleep(0.1)
        raise ClusterError(f"{name} not ready: {last}\n{self.log_tail(name)}")

    def _wait_for_etcd(self, deadline: float) -> None:
        # kube-apiserver gives up on etcd after 20 s; a loaded machine can take that long to start etcd
        self._wait_healthy("etcd", f"{self.etcd_url}/health", deadline)

    def _start_apiserver(self) -> None:
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        policy = self.folder / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        c = self.certs
        self._spawn("kube-apiserver", [
            self.bin / "kube-apiserver", f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={self.port}", f"--cert-dir={self.folder / 'apiserver'}",
            f"--tls-cert-file={c.serving_crt}", f"--tls-private-key-file={c.serving_key}",
            f"--client-ca-file={c.ca_crt}", "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={c.sa_pub}", f"--service-account-signing-key-file={c.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true",
            # as strict as OpenShift: setting blockOwnerDeletion needs `update` on the owner's finalizers
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
            # the apiserver's own endpoints would be 127.0.0.1, which Endpoints refuse; no pod calls it
            "--endpoint-reconciler-type=none",
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-format=json",
            "--audit-log-mode=blocking", "--audit-log-maxsize=0",
            "--enable-priority-and-fairness=false", "--max-requests-inflight=0",
            "--max-mutating-requests-inflight=0", "--v=1"])

    def _wait_ready(self, deadline: float) -> None:
        # verify= per request: requests lets $REQUESTS_CA_BUNDLE override a session's verify
        self._wait_healthy("kube-apiserver", f"{self.server}/readyz", deadline,
                           cert=(str(self.certs.admin_crt), str(self.certs.admin_key)), verify=str(self.certs.ca_crt))

    def _start_controllers(self) -> None:
        kubeconfig = str(self.kubeconfig)
        common = [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                  f"--authorization-kubeconfig={kubeconfig}", "--bind-address=127.0.0.1", "--leader-elect=false",
                  "--kube-api-qps=200", "--kube-api-burst=400"]
        self._spawn("kube-controller-manager", [
            self.bin / "kube-controller-manager", *common, f"--secure-port={free_port()}",
            f"--root-ca-file={self.certs.ca_crt}", f"--service-account-private-key-file={self.certs.sa_key}",
            "--use-service-account-credentials=true", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allocate-node-cidrs=false", "--concurrent-deployment-syncs=10", "--concurrent-replicaset-syncs=10",
            "--concurrent-gc-syncs=20", "--v=1"])
        self._spawn("kube-scheduler", [self.bin / "kube-scheduler", *common, f"--secure-port={free_port()}", "--v=1"])
        stages = sorted((self.bin.parent / "kwok-stages").glob("*.yaml"))
        if not stages:
            raise ClusterError(f"no KWOK stages in {self.bin.parent / 'kwok-stages'}; rerun e2e/build.sh")
        self._spawn("kwok", [
            self.bin / "kwok", f"--kubeconfig={kubeconfig}", "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            *(f"--config={p}" for p in stages), "--cidr=10.244.0.0/16", "--node-ip=10.0.0.1",
            f"--server-address=127.0.0.1:{free_port()}", "--node-lease-duration-seconds=40"])

    def _wait_for_default_service_account(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_alive()
            if self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise ClusterError("the default ServiceAccount did not appear (kube-controller-manager):\n"
                           f"{self.log_tail('kube-controller-manager')}")

    def install_crds(self, folder: Path) -> None:
        """Apply the CRDs in a folder and wait until the API server serves them."""
        self.kubectl("apply", "--server-side", "--field-manager=e2e-test", "-f", str(folder))
        for _ in range(20):  # a CRD read before the API server writes its first status has no conditions
            waited = self.kubectl("wait", "--for=condition=Established", "--timeout=30s", "-f", str(folder),
                                  check=False)
            if waited.returncode == 0:
                return
            if "accessor error" not in waited.stderr:
                break
            time.sleep(0.25)
        raise ClusterError(f"CRDs in {folder} not Established:\n{waited.stdout}{waited.stderr}")

    def install_monitoring_crds(self) -> None:
        """The Prometheus Operator's PodMonitor CRD (monitoring.coreos.com/v1), as kube-prometheus-stack
        installs it; no Prometheus Operator runs."""
        version = pinned_versions()["PROMETHEUS_OPERATOR_VERSION"]
        self.install_crds(self.bin.parent / f"monitoring-crds-{version}")

    def start_karpenter(self, instance_types: list[dict[str, Any]], timeout_s: float = 60.0) -> None:
        """Karpenter's KWOK provider beside the control plane (admin credentials, no leader election),
        with its CRDs and a KWOKNodeClass `default`; its nodes carry KWOK's annotation, so the KWOK
        controller makes them Ready."""
        self.install_crds(self.bin.parent / "crds")
        types = self.folder / "instance-types.json"
        types.write_text(json.dumps(instance_types, indent=1))
        health = free_port()
        self._spawn("karpenter", [self.bin / "karpenter-kwok"], env={
            "KUBECONFIG": str(self.kubeconfig), "DISABLE_LEADER_ELECTION": "true",
            "INSTANCE_TYPES_FILE_PATH": str(types), "METRICS_PORT": str(free_port()),
            "HEALTH_PROBE_PORT": str(health), "SYSTEM_NAMESPACE": "kube-system", "LOG_LEVEL": "info",
            "BATCH_IDLE_DURATION": "1s", "BATCH_MAX_DURATION": "3s"})
        self.apply({"apiVersion": "karpenter.kwok.sh/v1alpha1", "kind": "KWOKNodeClass",
                    "metadata": {"name": "default"}})
        if not wait_for_http_ok(f"http://127.0.0.1:{health}/readyz", timeout_s, self._check_alive):
            raise ClusterError(f"Karpenter not ready after {timeout_s:g} s:\n{self.log_tail('karpenter')}")

    # --- using it ---

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """Environment for a client process: KUBECONFIG, and the binaries first on PATH."""
        return {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig),
                "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: Path | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess:
        """Run the real kubectl against this cluster (admin unless `kubeconfig`)."""
        result = subprocess.run([str(self.bin / "kubectl"), *args], input=input, capture_output=True, text=True,
                                env=self.env(kubeconfig), timeout=timeout_s)
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed (exit {result.returncode}):\n"
                               f"{result.stdout}{result.stderr}")
        return result

    def apply(self, manifests: Iterable[Mapping[str, Any]] | Mapping[str, Any], *, server_side: bool = True) -> str:
        """kubectl apply of one manifest or several (server-side by default)."""
        docs = [manifests] if isinstance(manifests, Mapping) else list(manifests)
        args = ["apply", "-f", "-"] + (["--server-side", "--field-manager=e2e-test"] if server_side else [])
        return self.kubectl(*args, input=yaml.safe_dump_all(docs)).stdout

    def get(self, resource: str, name: str | None = None, namespace: str | None = None) -> dict[str, Any]:
        """kubectl get -o json (one object, or a List)."""
        args = ["get", resource] + ([name] if name else []) + (["-n", namespace] if namespace else []) + ["-o", "json"]
        return json.loads(self.kubectl(*args).stdout)

    def add_nodes(self, counts: Mapping[str, int], prefix: str = "kwok") -> list[str]:
        """Create KWOK nodes of the given instance types (`{"g6.xlarge": 2}`); returns their names."""
        nodes, names = [], []
        for instance_type, count in counts.items():
            shape = SHAPES[instance_type]
            for k in range(count):
                name = f"{prefix}-{instance_type.replace('.', '-')}-{k}"
                nodes.append(kwok_node(name, shape))
                names.append(name)
        self.apply(nodes)
        return names

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path,
                                   duration: str = "2h") -> Path:
        """A kubeconfig that authenticates as a ServiceAccount with a token from the TokenRequest
        API (`kubectl create token`): its calls are authorized by RBAC, never by system:masters."""
        token = self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}").stdout.strip()
        path.write_text(kubeconfig_text(self.server, self.certs.ca_crt, token=token, namespace=namespace,
                                        user=f"{namespace}-{name}"))
        return path

    def audit_events(self, username: str | None = None) -> list[dict[str, Any]]:
        """The API server's audit events (one per request), of one user when given."""
        events = []
        if not self.audit_log.is_file():
            return events
        with self.audit_log.open() as lines:
            for line in lines:
                if not line.strip():
                    continue
                event = json.loads(line)
                if username is None or event.get("user", {}).get("username") == username:
                    events.append(event)
        return events
