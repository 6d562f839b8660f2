"""deploy/: the container image, the Kubernetes manifests, the Compose file
and the Debian package, each run the way a user runs them, with podman
(runc), buildah's Containerfile support and debootstrap. The Compose file
is checked as data and its sidecar configurations with `sidecar --check`
in the image; Debian 12's podman-compose (1.0.3) cannot run it (it adds
the project network to a `network_mode: service:X` container, which podman
refuses).

No container registry is reachable here: tests/container/make-base.sh makes
the base image localhost/debian:12 with debootstrap (cached in podman's
storage and as a tarball under /var/cache/sidecar-test). podman 4.3 needs
the runc runtime and no default rlimits on these machines: CONTAINERS_CONF
points at tests/container/containers.conf.

What podman 4.3 cannot run of the Kubernetes manifests, and how the test
adapts them (kube_for_podman): a native sidecar (an init container with
restartPolicy: Always, Kubernetes 1.29) becomes the pod's first ordinary
container; status.hostIP is not filled, so CONSUL_HTTP_ADDR names the
emulator; images become the local ones; replicas: 1; containerPorts go
(podman publishes each on the host; the test calls the pod's address,
as a Service would); the Secret is made
with `podman secret create` from the generated certificates. podman runs
only liveness probes itself, so the test runs the readiness probe's own
command in the container. Everything else is the shipped files as they are.

The test fails (never skips) when podman is missing: tests/run.sh installs
it (deploy/container/install-tools.sh). SC_CONTAINER_TIMINGS=1 prints the
measured image size, start-to-ready time and idle RSS.
"""
import base64
import copy
import glob
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import harness  # noqa: E402

import yaml  # noqa: E402

ROOT = harness.ROOT
CT = os.path.join(ROOT, "tests", "container")
DEPLOY = os.path.join(ROOT, "deploy")
BASE = os.environ.get("SC_BASE_IMAGE", "localhost/debian:12")
IMAGE = "localhost/sidecar:test"
BUILD_IMAGE = "localhost/sidecar-build:test"
APP_IMAGE = "localhost/sidecar-test-app:latest"
NETWORK = "sidecar-test"
TD = "example.org"
ENV = dict(os.environ, CONTAINERS_CONF=os.environ.get("CONTAINERS_CONF", os.path.join(CT, "containers.conf")))


def spiffe(svc):
    return "spiffe://%s/ns/default/dc/dc1/svc/%s" % (TD, svc)


def podman(*args, timeout=120, check=True, input=None):
    p = subprocess.run(["podman", *args], env=ENV, input=input, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    if check and p.returncode != 0:
        raise AssertionError("podman %s: exit %d\n%s\n%s" % (" ".join(args), p.returncode, out[-3000:], err[-3000:]))
    return out if check else (p.returncode, out, err)


def wait_until(pred, timeout, interval=0.2, what="condition"):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = pred()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - keep polling, report the last error
            last = e
        time.sleep(interval)
    raise AssertionError("timed out after %.0fs waiting for %s (last: %r)" % (timeout, what, last))


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# --------------------------------------------------------------------------
# images, built once per run (podman's layer cache makes a rebuild quick)
# --------------------------------------------------------------------------

_images_built = False


def build_images():
    global _images_built
    if _images_built:
        return
    if not shutil.which("podman"):
        raise AssertionError("podman is not installed: run deploy/container/install-tools.sh "
                             "(tests/run.sh does); the container test never skips")
    p = subprocess.run([os.path.join(CT, "make-base.sh")], env=ENV, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=600)
    if p.returncode != 0:
        raise AssertionError("make-base.sh failed:\n" + p.stdout.decode(errors="replace")[-3000:])
    cf = os.path.join(DEPLOY, "container", "Containerfile")
    for tag, extra in ((BUILD_IMAGE, ["--target", "build"]), (IMAGE, [])):
        podman("build", "--layers", "--build-arg", "BASE=" + BASE, *extra, "-f", cf, "-t", tag, ROOT, timeout=900)
    podman("build", "--layers", "--build-arg", "BASE=" + BASE, "-f", os.path.join(CT, "app.Containerfile"),
           "-t", APP_IMAGE, ROOT, timeout=600)
    _images_built = True


def network_gateway():
    rc, _, _ = podman("network", "exists", NETWORK, check=False)
    if rc != 0:
        podman("network", "create", NETWORK)
    info = json.loads(podman("network", "inspect", NETWORK))[0]
    return info["subnets"][0]["gateway"]


def make_certs(d, *services):
    p = subprocess.run([os.path.join(ROOT, "certs", "make-certs.sh"), "--out", d, "--trust-domain", TD,
                        "--dc", "dc1", *services], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    if p.returncode != 0:
        raise AssertionError(p.stdout.decode(errors="replace"))
    for k in glob.glob(os.path.join(d, "*.key")):
        os.chmod(k, 0o644)   # read by the container's non-root user through a volume


# --------------------------------------------------------------------------
# manifests as data: every file parses, the objects carry what they promise
# --------------------------------------------------------------------------

class ManifestTest(unittest.TestCase):

    def test_every_manifest_parses_as_yaml(self):
        files = glob.glob(os.path.join(DEPLOY, "kubernetes", "*.yaml")) + \
            glob.glob(os.path.join(DEPLOY, "compose", "*.yaml"))
        self.assertGreaterEqual(len(files), 4, files)
        for f in files:
            docs = load_all(f)
            self.assertTrue(docs, f)
            for d in docs:
                self.assertIsInstance(d, dict, f)

    def _sidecar_containers(self, spec):
        return [c for c in spec.get("initContainers", []) + spec["containers"] if "sidecar" in c["image"]]

    def _check_pod_spec(self, spec, where, native):
        sc = self._sidecar_containers(spec)
        self.assertEqual(len(sc), 1, where)
        sc = sc[0]
        if native:
            self.assertIn(sc, spec.get("initContainers", []), where + ": the sidecar is an init container")
            self.assertEqual(sc.get("restartPolicy"), "Always", where + ": native sidecar")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            cmd = " ".join(sc[probe]["exec"]["command"])
            self.assertIn("http://127.0.0.1:19000/", cmd, where + ": " + probe + " on the admin endpoint")
        self.assertIn("/ready", " ".join(sc["readinessProbe"]["exec"]["command"]))
        self.assertTrue(sc["securityContext"]["runAsUser"] > 0)
        self.assertFalse(sc["securityContext"]["allowPrivilegeEscalation"])
        mounts = {m["mountPath"]: m["name"] for m in sc["volumeMounts"]}
        self.assertEqual(set(mounts), {"/etc/sidecar/config", "/etc/sidecar/policies", "/etc/sidecar/certs"})
        vols = {v["name"]: v for v in spec["volumes"]}
        self.assertIn("configMap", vols[mounts["/etc/sidecar/config"]])
        self.assertIn("configMap", vols[mounts["/etc/sidecar/policies"]])
        self.assertIn("secret", vols[mounts["/etc/sidecar/certs"]])
        return sc

    def _drain_timeout(self, docs, sc):
        cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
        cfg = yaml.safe_load(cms[[v for v in self.vols if v["name"] == "sidecar-config"][0]["configMap"]["name"]]
                             ["data"]["sidecar.yaml"])
        return int(str(cfg["drain_timeout"]).rstrip("s"))

    def test_kubernetes_deployment_and_service(self):
        docs = load_all(os.path.join(DEPLOY, "kubernetes", "orders.yaml"))
        kinds = [d["kind"] for d in docs]
        self.assertEqual(sorted(kinds), ["ConfigMap", "ConfigMap", "Deployment", "Service"])
        dep = next(d for d in docs if d["kind"] == "Deployment")
        spec = dep["spec"]["template"]["spec"]
        sc = self._check_pod_spec(spec, "orders Deployment", native=True)
        self.vols = spec["volumes"]
        self.assertGreater(spec["terminationGracePeriodSeconds"], self._drain_timeout(docs, sc))
        svc = next(d for d in docs if d["kind"] == "Service")
        inbound = [p["containerPort"] for p in sc["ports"]]
        self.assertEqual(len(svc["spec"]["ports"]), 1, "the Service exposes only the inbound port")
        self.assertIn(svc["spec"]["ports"][0]["port"], inbound)
        self.assertEqual(svc["spec"]["selector"], dep["spec"]["selector"]["matchLabels"])

    def test_kubernetes_plain_pod(self):
        docs = load_all(os.path.join(DEPLOY, "kubernetes", "payments-pod.yaml"))
        pod = next(d for d in docs if d["kind"] == "Pod")
        sc = self._check_pod_spec(pod["spec"], "payments Pod", native=False)
        self.vols = pod["spec"]["volumes"]
        self.assertGreater(pod["spec"]["terminationGracePeriodSeconds"], self._drain_timeout(docs, sc))

    def test_secret_template(self):
        docs = load_all(os.path.join(DEPLOY, "kubernetes", "certs-secret.yaml"))
        self.assertEqual(docs[0]["kind"], "Secret")
        self.assertEqual(set(docs[0]["stringData"]), {"tls.crt", "tls.key", "ca.crt"})

    def test_compose_file(self):
        doc = load_all(os.path.join(DEPLOY, "compose", "compose.yaml"))[0]
        svcs = doc["services"]
        self.assertIn("consul", svcs)
        self.assertIn("hashicorp/consul", svcs["consul"]["image"])
        for app in ("web", "api"):
            self.assertIn(app, svcs)
            side = svcs[app + "-sidecar"]
            self.assertEqual(side["network_mode"], "service:" + app, "the sidecar shares its app's network")
            self.assertIn("/etc/sidecar/config", " ".join(side["volumes"]))
            self.assertIn("healthcheck", side)


# --------------------------------------------------------------------------
# podman: the image, Kubernetes with kube play, Compose, the .deb
# --------------------------------------------------------------------------

def kube_for_podman(path, images, consul_addr):
    """The shipped manifest as podman 4.3 can run it (see the module doc)."""
    docs = load_all(path)
    for d in docs:
        if d["kind"] not in ("Deployment", "Pod"):
            continue
        if d["kind"] == "Deployment":
            d["spec"]["replicas"] = 1
            spec = d["spec"]["template"]["spec"]
        else:
            spec = d["spec"]
        native = [c for c in spec.pop("initContainers", []) if c.pop("restartPolicy", None) == "Always"]
        spec["containers"] = native + spec["containers"]
        for c in spec["containers"]:
            c.update(images[c["name"]] if c["name"] != "sidecar" else {"image": images["sidecar"]})
            c.pop("ports", None)   # podman would publish each on the host; the test uses the pod's IP
            env = []
            for e in c.get("env", []):
                if e["name"] == "HOST_IP":
                    continue
                if e["name"] == "CONSUL_HTTP_ADDR":
                    e = {"name": e["name"], "value": consul_addr}
                env.append(e)
            if env:
                c["env"] = env
    return docs


def podman_secret(name, certdir, svc):
    """A podman secret holding a Kubernetes Secret as podman 4.3 reads it
    (its `data` values are taken as the file contents, not base64)."""
    doc = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
           "data": {"tls.crt": open(os.path.join(certdir, svc + ".pem")).read(),
                    "tls.key": open(os.path.join(certdir, svc + ".key")).read(),
                    "ca.crt": open(os.path.join(certdir, "ca-bundle.pem")).read()}}
    podman("secret", "rm", name, check=False)
    podman("secret", "create", name, "-", input=yaml.safe_dump(doc).encode())


def exec_probe(ctr, probe_cmd):
    rc, _, _ = podman("exec", ctr, *probe_cmd, check=False, timeout=20)
    return rc == 0


class TlsClient:
    """HTTPS with a client certificate against a sidecar's inbound port;
    one connection per request, so a drain's boundary is clean: a request
    whose TLS handshake completed was accepted by the sidecar."""

    def __init__(self, certdir, svc):
        self.ctx = ssl.create_default_context(cafile=os.path.join(certdir, "ca-bundle.pem"))
        self.ctx.check_hostname = False   # the identity is the URI SAN, checked below by the caller field
        self.ctx.load_cert_chain(os.path.join(certdir, svc + ".pem"), os.path.join(certdir, svc + ".key"))

    def get(self, host, port, path, timeout=10):
        """-> ("ok", status, body) | ("refused", err) | ("inflight-failed", err)"""
        raw = socket.socket()
        raw.settimeout(timeout)
        try:
            raw.connect((host, port))
            s = self.ctx.wrap_socket(raw)
        except OSError as e:
            raw.close()
            return ("refused", repr(e))
        try:
            s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)).encode())
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
        except OSError as e:
            return ("inflight-failed", "%r after %d bytes" % (e, len(data)))
        finally:
            s.close()
        if not data:
            return ("inflight-failed", "closed without an answer")
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return ("ok", status, body.decode(errors="replace"))


class PodmanTestCase(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        build_images()
        cls.tmp = tempfile.mkdtemp(prefix="sc-container-")
        cls.gateway = network_gateway()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)


class ImageTest(PodmanTestCase):

    def test_image_runs_as_non_root_with_the_package_and_reports_timings(self):
        cfg = json.loads(podman("image", "inspect", IMAGE))[0]["Config"]
        self.assertEqual(cfg["User"], "10001:10001")
        self.assertEqual(cfg["Entrypoint"], ["/usr/bin/sidecar"])
        self.assertEqual(cfg["Cmd"], ["--config", "/etc/sidecar/sidecar.yaml"])
        out = podman("run", "--rm", "--entrypoint", "dpkg-query", IMAGE, "-W", "-f", "${Status} ${Version}", "sidecar")
        self.assertEqual(out, "install ok installed 0.1.0")
        # The runtime stage holds no compiler and no -dev package.
        rc, _, _ = podman("run", "--rm", "--entrypoint", "sh", IMAGE, "-c",
                          "command -v gcc || command -v cmake || dpkg -l | grep -- '-dev '", check=False)
        self.assertEqual(rc, 1, "build tools leaked into the runtime image")

        # Start-to-ready: from `podman run` to the first 200 on /ready (the
        # admin endpoint on the container's address, for this measure only).
        d = os.path.join(self.tmp, "img")
        os.makedirs(d)
        with open(os.path.join(d, "sidecar.yaml"), "w") as f:
            # Outbound only: with an inbound section /ready would also wait for an app.
            f.write("service: {name: timing}\nadmin: {listen: \"0.0.0.0:19000\", allow_remote: true}\n"
                    "upstreams: [{upstream: u, protocol: http1, listen: \"127.0.0.1:9191\",\n"
                    "             discovery: {static: [\"127.0.0.1:8080\"]}}]\n")
        name = "sc-test-image"
        podman("rm", "-f", name, check=False)
        t0 = time.monotonic()
        podman("run", "-d", "--name", name, "--network", NETWORK, "-v", d + ":/etc/sidecar/config:ro",
               IMAGE, "--config", "/etc/sidecar/config/sidecar.yaml")
        try:
            ip = json.loads(podman("inspect", name))[0]["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]

            def ready():
                c = http.client.HTTPConnection(ip, 19000, timeout=1)
                try:
                    c.request("GET", "/ready")
                    return c.getresponse().status == 200
                finally:
                    c.close()
            wait_until(ready, 30, interval=0.02, what="/ready")
            start_to_ready = time.monotonic() - t0
            # PID 1 is the sidecar itself (it handles SIGTERM; no init needed).
            self.assertIn("sidecar", podman("exec", name, "cat", "/proc/1/cmdline").replace("\0", " "))
            time.sleep(2)
            status = podman("exec", name, "cat", "/proc/1/status")
            rss_kib = int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1])
            # SIGTERM as PID 1: drains and exits 0.
            t1 = time.monotonic()
            podman("stop", "-t", "10", name, timeout=30)
            stop_s = time.monotonic() - t1
            state = json.loads(podman("inspect", name))[0]["State"]
            self.assertEqual(state["ExitCode"], 0, podman("logs", name))
            self.assertLess(stop_s, 8, "SIGTERM as PID 1 did not stop the sidecar; podman killed it")
        finally:
            podman("rm", "-f", name, check=False)
        size = json.loads(podman("image", "inspect", IMAGE))[0]["Size"]
        base = json.loads(podman("image", "inspect", BASE))[0]["Size"]
        msg = ("image %s: %.1f MB (base %.1f MB, +%.1f MB); start to ready %.2f s; idle RSS %.1f MiB"
               % (IMAGE, size / 1e6, base / 1e6, (size - base) / 1e6, start_to_ready, rss_kib / 1024.0))
        print("\n" + msg, file=sys.stderr)
        self.assertLess(start_to_ready, 10)
        self.assertLess(rss_kib, 64 * 1024)

    def test_shipped_kubernetes_configs_pass_check_in_the_image(self):
        certs = os.path.join(self.tmp, "check-certs")
        make_certs(certs, "orders", "payments")
        for f in ("orders.yaml", "payments-pod.yaml"):
            docs = load_all(os.path.join(DEPLOY, "kubernetes", f))
            cms = [d for d in docs if d["kind"] == "ConfigMap"]
            svc = cms[0]["metadata"]["name"].split("-")[0]
            d = os.path.join(self.tmp, "check-" + svc)
            for cm in cms:
                sub = os.path.join(d, "policies" if cm["metadata"]["name"].endswith("-policies") else "config")
                os.makedirs(sub)
                for k, v in cm["data"].items():
                    with open(os.path.join(sub, k), "w") as fh:
                        fh.write(v)
            cd = os.path.join(d, "certs")
            os.makedirs(cd)
            shutil.copy(os.path.join(certs, svc + ".pem"), os.path.join(cd, "tls.crt"))
            shutil.copy(os.path.join(certs, svc + ".key"), os.path.join(cd, "tls.key"))
            shutil.copy(os.path.join(certs, "ca-bundle.pem"), os.path.join(cd, "ca.crt"))
            out = podman("run", "--rm", *[x for s in ("config", "policies", "certs")
                                         for x in ("-v", "%s/%s:/etc/sidecar/%s:ro" % (d, s, s))],
                         IMAGE, "--config", "/etc/sidecar/config/sidecar.yaml", "--check")
            self.assertIn("configuration OK", out, f)

    def test_shipped_compose_configs_pass_check_in_the_image(self):
        d = os.path.join(self.tmp, "compose")
        shutil.copytree(os.path.join(DEPLOY, "compose"), d)
        make_certs(os.path.join(d, "certs"), "web", "api")
        svcs = load_all(os.path.join(d, "compose.yaml"))[0]["services"]
        for svc in ("web", "api"):
            side = svcs[svc + "-sidecar"]
            vols = [x for v in side["volumes"] for x in ("-v", v.replace("./", d + "/", 1))]
            out = podman("run", "--rm", *vols, *[x for k, v in side["environment"].items() for x in ("-e", k + "=" + v)],
                         IMAGE, *side["command"], "--check")
            self.assertIn("configuration OK", out, svc)


class PackageTest(PodmanTestCase):

    def test_deb_installs_in_a_fresh_container_and_checks_the_example(self):
        out = os.path.join(self.tmp, "deb")
        os.makedirs(out)
        cid = podman("create", BUILD_IMAGE, "true").strip()
        try:
            podman("cp", cid + ":/out/.", out)
        finally:
            podman("rm", cid, check=False)
        debs = glob.glob(os.path.join(out, "sidecar_*.deb"))
        self.assertEqual(len(debs), 1, os.listdir(out))
        script = (
            "set -e; apt-get update -qq; "
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends /pkg/%s >/dev/null; "
            "sidecar --config /etc/sidecar/example/sidecar.yaml --check; "
            "test -f /usr/lib/systemd/system/sidecar@.service; "
            "grep -q '^ExecStart=/usr/bin/sidecar --config /etc/sidecar/%%i/sidecar.yaml$' /usr/lib/systemd/system/sidecar@.service; "
            "test -f /usr/share/doc/sidecar/configuration.md; "
            "grep -qx /etc/sidecar/example/sidecar.yaml /var/lib/dpkg/info/sidecar.conffiles; "
            "dpkg -r sidecar >/dev/null; ! test -e /usr/bin/sidecar; echo removed"
        ) % os.path.basename(debs[0])
        res = podman("run", "--rm", "-v", out + ":/pkg:ro", BASE, "bash", "-c", script, timeout=300)
        self.assertIn("configuration OK", res)
        self.assertIn("removed", res)


class KubePlayTest(PodmanTestCase):
    """orders (Deployment, HTTP/1.1 app, native sidecar) and payments (Pod,
    gRPC app) with mTLS between their sidecars, both registered in Consul
    (the emulator on the host, on the test network's gateway)."""

    def setUp(self):
        sys.path.insert(0, os.path.join(ROOT, "tests", "consul"))
        from consul_emulator import ConsulEmulator
        self.certs = os.path.join(self.tmp, "kube-certs")
        if not os.path.isdir(self.certs):
            make_certs(self.certs, "orders", "payments", "frontend")
        self.files = {}
        self.emu = ConsulEmulator(http_addr="%s:0" % self.gateway, check_update_interval=0)
        self.emu.start()
        self.addCleanup(self.emu.stop)
        addr = "http://%s:%d" % (self.gateway, self.emu.port)
        images = {"app": None}
        for name, app in (("orders", ["http", "--name", "orders"]), ("payments", ["grpc", "--name", "payments"])):
            images = {"sidecar": IMAGE, "app": {"image": APP_IMAGE, "args": app}}
            f = "orders.yaml" if name == "orders" else "payments-pod.yaml"
            docs = kube_for_podman(os.path.join(DEPLOY, "kubernetes", f), images, addr)
            path = os.path.join(self.tmp, "podman-" + f)
            with open(path, "w") as fh:
                yaml.safe_dump_all(docs, fh)
            self.files[name] = path
            podman_secret(name + "-sidecar-certs", self.certs, name)
            self.addCleanup(podman, "secret", "rm", name + "-sidecar-certs", check=False)
            podman("kube", "down", path, check=False)
            # kube down leaves the ConfigMap and Secret volumes behind (podman 4.3).
            vols = [v["configMap"]["name"] if "configMap" in v else v["secret"]["secretName"]
                    for d in docs if d["kind"] in ("Deployment", "Pod")
                    for v in (d["spec"]["template"]["spec"] if d["kind"] == "Deployment" else d["spec"])["volumes"]]
            self.addCleanup(podman, "volume", "rm", "-f", *vols, check=False)
            self.addCleanup(podman, "kube", "down", path, check=False, timeout=60)

    def _play(self, name):
        podman("kube", "play", "--network", NETWORK, self.files[name], timeout=120)

    def test_kube_play_mesh_both_directions_then_drain(self):
        self._play("payments")
        self._play("orders")
        pods = {"orders": "orders-pod-0", "payments": "payments"}
        docs = {n: load_all(p) for n, p in self.files.items()}
        for n, pod in pods.items():
            spec = next(d for d in docs[n] if d["kind"] in ("Deployment", "Pod"))
            spec = spec["spec"]["template"]["spec"] if spec["kind"] == "Deployment" else spec["spec"]
            sc = next(c for c in spec["containers"] if c["name"] == "sidecar")
            ctr = pod + "-sidecar"
            wait_until(lambda: exec_probe(ctr, sc["startupProbe"]["exec"]["command"]), 30, what=n + " startup probe")
            wait_until(lambda: exec_probe(ctr, sc["readinessProbe"]["exec"]["command"]), 60,
                       what=n + " readiness probe (the app answers)")
            self.assertTrue(exec_probe(ctr, sc["livenessProbe"]["exec"]["command"]))
        # Both registered themselves in Consul with the pod's address.
        wait_until(lambda: all(self.emu.snapshot() and self._passing(s) for s in ("orders", "payments")), 30,
                   what="both services passing in Consul")

        # gRPC: orders' app -> its sidecar 127.0.0.1:9191 == mTLS ==> payments' sidecar -> payments' gRPC app
        out = wait_until(lambda: self._exec_ok("orders-pod-0-app", "call-grpc", "127.0.0.1:9191", "--message", "m1"),
                         30, what="orders -> payments gRPC")
        ans = json.loads(out)
        self.assertEqual((ans["service"], ans["caller"], ans["echo"]), ("payments", spiffe("orders"), "m1"))
        # HTTP/1.1: payments' app -> its sidecar 127.0.0.1:9192 == mTLS ==> orders' sidecar -> orders' app
        out = wait_until(lambda: self._exec_ok("payments-app", "call-http", "http://127.0.0.1:9192/p?x=1"),
                         30, what="payments -> orders HTTP/1.1")
        ans = json.loads(out)
        self.assertEqual((ans["service"], ans["caller"], ans["path"]), ("orders", spiffe("payments"), "/p?x=1"))
        # /stats from inside the pod (the admin endpoint is on the pod's loopback only).
        stats = harness.Stats(podman("exec", "orders-pod-0-sidecar", "curl", "-fsS", "http://127.0.0.1:19000/stats"))
        self.assertGreaterEqual(stats.value("sidecar_upstream_requests_total", upstream="payments"), 1, stats.text)
        self.assertGreaterEqual(stats.value("sidecar_consul_registered"), 1, stats.text)

        # Drain: callers (a "frontend" certificate) hit orders' inbound in a
        # steady loop while `podman kube down` stops the pod.
        ip = json.loads(podman("inspect", "orders-pod-0-sidecar"))[0]["NetworkSettings"]["Networks"][NETWORK]["IPAddress"]
        client = TlsClient(self.certs, "frontend")
        first = client.get(ip, 15443, "/hello")
        self.assertEqual(first[:2], ("ok", 200), first)
        self.assertEqual(json.loads(first[2])["caller"], spiffe("frontend"))
        results, stop = [], threading.Event()

        ids = iter(range(1, 1 << 30))

        def loop():
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                t, rid = time.monotonic(), next(ids)
                r = client.get(ip, 15443, "/slow?delay_ms=300&id=%d" % rid)
                results.append((t, r + (rid,)))   # t: when it started, relative to the stop below
                if r[0] == "refused":
                    time.sleep(0.05)
        threads = [threading.Thread(target=loop, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        log = subprocess.Popen(["podman", "logs", "-f", "orders-pod-0-sidecar"], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # `podman kube down` stops a pod with a timeout of 0 (SIGTERM, then
        # SIGKILL at once), and `podman pod stop` stops the infra container,
        # whose cleanup unplugs the pod's network, in parallel with the others
        # (podman 4.3): so the pod's containers are stopped first with the
        # manifest's grace period, then kube down removes the rest, as
        # deploy/README.md tells users.
        grace = next(d for d in docs["orders"] if d["kind"] == "Deployment")[
            "spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        t_down = time.monotonic()
        podman("stop", "-t", str(grace), pods["orders"] + "-app", pods["orders"] + "-sidecar", timeout=grace + 30)
        down_s = time.monotonic() - t_down
        state = json.loads(podman("inspect", "orders-pod-0-sidecar"))[0]["State"]
        app_saw = {int(l.split()[-1]) for l in podman("logs", "orders-pod-0-app").splitlines()
                   if l.startswith("app: request ")}
        podman("kube", "down", self.files["orders"], timeout=60)
        stop.set()
        for t in threads:
            t.join(15)
        try:
            sidecar_log = log.communicate(timeout=10)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            log.kill()
            sidecar_log = log.communicate()[0].decode(errors="replace")
        ok = [r for _, r in results if r[0] == "ok" and r[1] == 200]
        # Every request must have succeeded, including one whose connection
        # the sidecar accepted just before SIGTERM and had not read yet (the
        # drain serves a connection's first request; it closes only idle
        # keep-alive connections). A connection closed unread is reported
        # apart so a failure says which case it was.
        def closed_unread(r):
            return (r[0] == "inflight-failed" and r[-1] not in app_saw
                    and ("closed without" in r[1] or r[1].endswith(" after 0 bytes")))
        bad = [(round(t - t_down, 3), r) for t, r in results
               if (r[0] == "ok" and r[1] != 200) or (r[0] == "inflight-failed" and not closed_unread(r))]
        unread = [(round(t - t_down, 3), r) for t, r in results if closed_unread(r)]
        if unread:
            print("\nclosed before the first request was read during the drain: %r" % unread, file=sys.stderr)
        self.assertFalse(unread, "connections closed during the drain before their first request was read")
        during = [r for t, r in results if t >= t_down - 0.3 and r[0] == "ok" and r[1] == 200]
        self.assertFalse(bad, "in-flight requests failed during the drain: %r\n%s" % (bad[:5], sidecar_log[-3000:]))
        self.assertGreater(len(ok), 10, results[-5:])
        self.assertTrue(during, "no request completed after SIGTERM: nothing was in flight")
        self.assertIn("received SIGTERM", sidecar_log)
        self.assertEqual(state["ExitCode"], 0, "the sidecar did not drain and exit 0:\n" + sidecar_log[-2000:])
        self.assertLess(down_s, grace, "the pod did not stop within its grace period")
        # It deregistered from Consul on the way out.
        self.assertFalse(self._passing("orders"))

    def _passing(self, svc):
        return any(all(c["Status"] == "passing" for c in e["Checks"])
                   for e in self._health(svc))

    def _health(self, svc):
        c = http.client.HTTPConnection(self.gateway, self.emu.port, timeout=5)
        c.request("GET", "/v1/health/service/" + svc)
        return json.loads(c.getresponse().read())

    def _exec_ok(self, ctr, *args):
        rc, out, err = podman("exec", ctr, "/usr/bin/python3", "/opt/app/pod_app.py", *args, check=False, timeout=30)
        if rc != 0:
            raise AssertionError(err or out)
        return out


if __name__ == "__main__":
    unittest.main()
