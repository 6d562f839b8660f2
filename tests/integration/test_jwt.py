"""JWT authentication at the inbound listener through the real binary, with
real tokens signed by a test issuer (../data/jwt/issuer.py, PyJWT) with
RS256, ES256 and HS256, keys from a JWKS file and from a JWKS URL served
here: verified tokens reach the app with their claims as headers (forged
copies removed, the token kept or removed), every refusal with its status,
WWW-Authenticate and x-sidecar-reason, an unknown kid fetched again, a
rate limit keyed by the `sub` claim, and gRPC UNAUTHENTICATED /
PERMISSION_DENIED.
"""

import base64
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

import grpc

import harness
from harness import RawConn, SidecarTestCase, free_port, wait_until
from grpc_client import Echo

HERE = os.path.dirname(os.path.abspath(__file__))
ISSUER_PY = os.path.join(HERE, "..", "data", "jwt", "issuer.py")
FILE_ISS = "https://py.issuer.test"
URL_ISS = "https://url.issuer.test"

try:
    import jwt as pyjwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
except ImportError:  # pragma: no cover
    pyjwt = None


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def request(port, path="/echo", token=None, headers=None, method="GET"):
    h = dict(headers or {})
    if token:
        h["Authorization"] = "Bearer " + token
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, headers=h)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def seen_headers(body):
    """The headers the app received (lower-case names, in order)."""
    return [(k.lower(), v) for k, v in json.loads(body)["headers"]]


@unittest.skipUnless(pyjwt, "python3-jwt / python3-cryptography missing")
class JwtTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="sc-it-jwt-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.now = int(time.time())
        harness.run(["/usr/bin/python3", ISSUER_PY, "mint", cls.dir, str(cls.now)], timeout=60).check_returncode()
        with open(os.path.join(cls.dir, "tokens.txt")) as f:
            cls.tok = dict(line.split() for line in f if line.strip())
        with open(os.path.join(cls.dir, "rsa.pem"), "rb") as f:
            cls.rsa = serialization.load_pem_private_key(f.read(), None)
        with open(os.path.join(cls.dir, "ec.pem"), "rb") as f:
            cls.ec = serialization.load_pem_private_key(f.read(), None)
        with open(os.path.join(cls.dir, "jwks.json")) as f:
            cls.secret = b64d([k for k in json.load(f)["keys"] if k["kty"] == "oct"][0]["k"])
        # the URL issuer: its own key, served by issuer.py from a directory of its own
        cls.url_dir = os.path.join(cls.dir, "url")
        os.mkdir(cls.url_dir)
        cls.url_keys = {"url-1": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
        cls.publish_url_keys()
        cls.server = subprocess.Popen(["/usr/bin/python3", ISSUER_PY, "serve", cls.url_dir],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        harness._track(cls.server)
        cls.addClassCleanup(harness.kill_proc, cls.server)
        cls.jwks_port = int(cls.server.stdout.readline())

        cls.app = cls.class_http1_peer("app")
        cls.in_port = free_port()
        cfg = harness.base_config(free_port(), name="orders",
                                  inbound={"listen_port": cls.in_port, "app_port": cls.app.port})
        cfg["inbound"]["jwt"] = cls.jwt_config()
        cfg["inbound"]["rate_limits"] = [{"name": "per-sub", "rate": "2/m", "key": "claim:sub",
                                          "match": {"path_prefix": "/limited/"}}]
        cls.sc = cls.class_sidecar(cfg)

        cls.grpc_app = cls.class_grpc_peer("gapp")
        cls.g_port = free_port()
        gcfg = harness.base_config(free_port(), name="orders",
                                   inbound={"listen_port": cls.g_port, "app_port": cls.grpc_app.port,
                                            "app_protocol": "grpc"})
        gcfg["inbound"]["jwt"] = cls.jwt_config(grpc_rules=True)
        cls.gsc = cls.class_sidecar(gcfg, name="grpc-sidecar")
        cls.echo = Echo(cls.class_channel(cls.g_port))

    @classmethod
    def jwt_config(cls, grpc_rules=False):
        rules = [
            {"prefix": "/", "issuers": ["file", "url"], "forward": {"sub": "x-user-id", "scope": "x-scope"}},
            {"prefix": "/admin/", "claims": {"role": "admin"}, "forward": {"sub": "x-user-id"}},
            {"prefix": "/strip/", "keep_token": False, "forward": {"sub": "x-user-id"}},
            {"prefix": "/open/", "mode": "optional", "forward": {"sub": "x-user-id"}},
            {"prefix": "/healthz", "mode": "off"},
        ]
        if grpc_rules:
            rules = [{"prefix": "/", "issuers": ["file"], "scopes": ["orders.read"]},
                     {"prefix": "/test.Echo/Unary", "issuers": ["file"], "claims": {"role": "admin"}}]
        return {
            "issuers": [
                {"name": "file", "issuer": FILE_ISS, "audiences": ["orders"],
                 "algorithms": ["RS256", "ES256", "HS256"], "jwks_file": os.path.join(cls.dir, "jwks.json"),
                 "leeway": "5s"},
                {"name": "url", "issuer": URL_ISS, "audiences": ["orders"], "algorithms": ["RS256"],
                 "jwks_url": "http://127.0.0.1:%d/jwks.json" % cls.jwks_port, "refresh": "10s",
                 "refetch_min_interval": "1s", "fetch_timeout": "2s"},
            ],
            "rules": rules,
        }

    @classmethod
    def publish_url_keys(cls):
        keys = []
        for kid, k in cls.url_keys.items():
            j = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(k.public_key()))
            j.update({"kid": kid, "use": "sig", "alg": "RS256"})
            keys.append(j)
        tmp = os.path.join(cls.url_dir, "jwks.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"keys": keys}, f)
        os.rename(tmp, os.path.join(cls.url_dir, "jwks.json"))

    def mint(self, alg="RS256", kid="py-rsa", key=None, **claims):
        c = {"iss": FILE_ISS, "aud": "orders", "sub": "alice", "iat": self.now, "exp": int(time.time()) + 300,
             "scope": "orders.read"}
        c.update(claims)
        c = {k: v for k, v in c.items() if v is not None}
        if key is None:
            key = {"RS256": self.rsa, "ES256": self.ec, "HS256": self.secret}[alg]
        return pyjwt.encode(c, key, algorithm=alg, headers={"kid": kid})

    def refused(self, token, reason, status=401, path="/echo"):
        st, h, body = request(self.in_port, path, token=token)
        self.assertEqual((st, h.get("x-sidecar-reason")), (status, reason), body)
        self.assertTrue(h["www-authenticate"].startswith('Bearer realm="orders"'), h["www-authenticate"])
        return h

    # -- tests ----------------------------------------------------------------------------
    def test_algorithms_and_forwarded_claims(self):
        for name in ("rs256", "es256", "hs256"):
            st, _, body = request(self.in_port, token=self.tok[name])
            self.assertEqual(st, 200, (name, body))
            hs = seen_headers(body)
            self.assertIn(("x-user-id", "alice"), hs)
            self.assertIn(("x-scope", "orders.read"), hs)
        st = harness.Stats(self.sc.admin("/stats")[2].decode())
        self.assertGreaterEqual(st.value("sidecar_jwt_verified_total"), 3)

    def test_refusals(self):
        h = self.refused(None, "jwt-missing")
        self.assertNotIn("error=", h["www-authenticate"])
        h = self.refused(self.tok["rs256_expired"], "jwt-expired")
        self.assertIn('error="invalid_token"', h["www-authenticate"])
        self.refused(self.mint(nbf=int(time.time()) + 3600), "jwt-not-yet-valid")
        self.refused(self.mint(iss="https://evil.test"), "jwt-unknown-issuer")
        self.refused(self.tok["es256_other_aud"], "jwt-wrong-audience")
        self.refused(self.mint(aud=None), "jwt-wrong-audience")
        self.refused(self.mint(exp=None), "jwt-expired")              # require_exp
        self.refused("not.a.jwt", "jwt-malformed")
        # alg none and algorithm confusion (HS256 keyed with the RSA public key)
        none = pyjwt.encode({"iss": FILE_ISS, "aud": "orders", "sub": "x", "exp": int(time.time()) + 60}, None,
                            algorithm="none")
        self.refused(none, "jwt-alg-refused")
        st, h, _ = request(self.in_port, token=self.tok["hs256_confused"])
        self.assertEqual(st, 401)
        self.assertIn(h["x-sidecar-reason"], ("jwt-unknown-key", "jwt-bad-signature", "jwt-alg-refused"))
        # a bad signature: the payload changed under it
        hd, pl, sig = self.tok["rs256"].split(".")
        forged = base64.urlsafe_b64encode(json.dumps(dict(json.loads(b64d(pl)), sub="root")).encode()).rstrip(b"=")
        self.refused(hd + "." + forged.decode() + "." + sig, "jwt-bad-signature")
        # valid, without the claim the path requires: 403
        h = self.refused(self.tok["rs256"], "jwt-claims-missing", 403, "/admin/x")
        self.assertIn('error="insufficient_scope"', h["www-authenticate"])
        st, _, _ = request(self.in_port, "/admin/x", token=self.mint(role="admin"))
        self.assertEqual(st, 404)  # the app's answer: it got through
        self.assertEqual(self.app.paths.get("/admin/x"), 1)

    def test_forged_claim_headers_removed(self):
        forged = {"x-user-id": "mallory", "X_User_Id": "mallory", "x-scope": "admin"}
        st, _, body = request(self.in_port, token=self.tok["es256"], headers=forged)
        self.assertEqual(st, 200)
        hs = seen_headers(body)
        self.assertEqual([v for k, v in hs if k.replace("_", "-") == "x-user-id"], ["alice"])
        self.assertEqual([v for k, v in hs if k == "x-scope"], ["orders.read"])
        # optional path, no token: no claim header at all, forged or not
        st, _, body = request(self.in_port, "/open/echo", headers=forged)
        self.assertEqual(st, 404)
        names = [k.lower().replace("_", "-") for k, _ in self.app.records[-1]["headers"]]
        self.assertNotIn("x-user-id", names)
        # an HTTP/2 caller's forged copies likewise
        out = harness.curl("-s", "--http2-prior-knowledge", "-H", "Authorization: Bearer " + self.tok["rs256"],
                           "-H", "x-user-id: mallory", "-H", "x_user_id: mallory",
                           "http://127.0.0.1:%d/echo" % self.in_port)
        hs = seen_headers(out.stdout)
        self.assertEqual([v for k, v in hs if k.replace("_", "-") == "x-user-id"], ["alice"])
        # forged copies in HTTP/1.1 request trailers are dropped too
        with RawConn(self.in_port) as c:
            c.send(("POST /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nTransfer-Encoding: chunked\r\n"
                    "\r\n3\r\nabc\r\n0\r\nx-user-id: mallory\r\nx-other: kept\r\n\r\n" % self.tok["rs256"]).encode())
            r = c.read_response(10)
        self.assertEqual(r.status, 200)
        got = json.loads(r.body)
        self.assertNotIn("x-user-id", [k.lower() for k, _ in got["trailers"]])
        self.assertIn("x-other", [k.lower() for k, _ in got["trailers"]])

    def test_token_kept_or_removed(self):
        st, _, body = request(self.in_port, "/echo", token=self.tok["rs256"])
        self.assertIn("authorization", [k for k, _ in seen_headers(body)])
        st, _, _ = request(self.in_port, "/strip/echo", token=self.tok["rs256"])
        self.assertEqual(st, 404)
        rec = self.app.records[-1]
        self.assertNotIn("authorization", [k.lower() for k, _ in rec["headers"]])
        self.assertIn(("x-user-id", "alice"), [(k.lower(), v) for k, v in rec["headers"]])
        st, _, _ = request(self.in_port, "/healthz")  # mode off
        self.assertEqual(st, 404)

    def test_jwks_url_and_unknown_kid(self):
        tok = self.mint(iss=URL_ISS, kid="url-1", key=self.url_keys["url-1"])
        self.assertEqual(request(self.in_port, token=tok)[0], 200)
        # a key rotated in at the issuer: the first token with it waits for the refetch
        type(self).url_keys["url-2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.publish_url_keys()
        time.sleep(1.1)  # refetch_min_interval since the start-up fetch
        tok2 = self.mint(iss=URL_ISS, kid="url-2", key=self.url_keys["url-2"])
        st, _, body = request(self.in_port, token=tok2)
        self.assertEqual(st, 200, body)
        with open(os.path.join(self.url_dir, "hits.log")) as f:
            self.assertGreaterEqual(f.read().count("/jwks.json"), 2)
        # a kid nobody has: refused after (at most) one more fetch
        tok3 = self.mint(iss=URL_ISS, kid="nobody", key=self.url_keys["url-2"])
        self.refused(tok3, "jwt-unknown-key")
        self.assertIsNotNone(self.sc.clusters().get("jwt"))
        st = harness.Stats(self.sc.admin("/stats")[2].decode())
        self.assertGreaterEqual(st.value("sidecar_jwt_jwks_refetches_total"), 1)
        self.assertGreaterEqual(st.value("sidecar_jwt_pending_total"), 1)  # the url-2 request waited

    def test_rate_limit_by_sub(self):
        alice, bob = self.mint(sub="alice-rl"), self.mint(sub="bob-rl")
        got = [request(self.in_port, "/limited/x", token=alice)[0] for _ in range(3)]
        self.assertEqual(got, [404, 404, 429])
        self.assertEqual(request(self.in_port, "/limited/x", token=bob)[0], 404)

    def test_grpc(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.echo.unary(b"x", timeout=5)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        md = dict(cm.exception.trailing_metadata() or ())
        self.assertEqual(md.get("x-sidecar-reason"), "jwt-missing")
        with self.assertRaises(grpc.RpcError) as cm:
            self.echo.unary(b"x", timeout=5, metadata=[("authorization", "Bearer " + self.tok["rs256"])])
        self.assertEqual(cm.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        ok = self.echo.unary(b"x", timeout=5,
                             metadata=[("authorization", "Bearer " + self.mint(alg="ES256", kid="py-ec",
                                                                               role="admin"))])
        self.assertEqual(ok, b"x")
        with self.assertRaises(grpc.RpcError) as cm:
            self.echo.unary(b"x", timeout=5, metadata=[("authorization", "Bearer " + self.tok["rs256_expired"])])
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAUTHENTICATED)


if __name__ == "__main__":
    unittest.main()
