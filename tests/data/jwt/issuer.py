#!/usr/bin/python3
"""A test token issuer: keys, a JWKS, tokens signed with PyJWT, and a JWKS
endpoint. Used by tests/unit/test_jwt.c (and usable by integration tests).

  issuer.py mint DIR NOW
      Makes an RSA 2048 key (kid "py-rsa"), an EC P-256 key (kid "py-ec")
      and an HMAC secret (kid "py-hs") and writes DIR/jwks.json (public keys
      and the secret, as a jwks_file holds them), DIR/jwks_public.json
      (without the secret, as a URL serves it), DIR/rsa.pem / ec.pem (the
      private keys) and DIR/tokens.txt: one "name token" line per token,
      issued at NOW (unix seconds) by https://py.issuer.test for audience
      "orders", signed with PyJWT (python3-jwt, python3-cryptography).

  issuer.py serve DIR
      Serves DIR over HTTP on 127.0.0.1, a free port printed as the first
      line of stdout. GET /jwks.json answers DIR/jwks.json as it is on disk
      now; /status/500 answers 500; /garbage answers non-JSON; /big answers
      1 MiB of JSON; /slow waits 10 s. Every request is appended to
      DIR/hits.log (one path per line). Ends when stdin closes.
"""
import http.server
import json
import os
import sys
import threading
import time

ISS = "https://py.issuer.test"


def mint(d, now):
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    secret = os.urandom(32)

    def public_jwk(alg_cls, key, kid, alg):
        j = json.loads(alg_cls.to_jwk(key.public_key()))
        j.update({"kid": kid, "use": "sig", "alg": alg})
        return j

    rs = public_jwk(jwt.algorithms.RSAAlgorithm, rsa_key, "py-rsa", "RS256")
    es = public_jwk(jwt.algorithms.ECAlgorithm, ec_key, "py-ec", "ES256")
    hs = json.loads(jwt.algorithms.HMACAlgorithm.to_jwk(secret))
    hs.update({"kid": "py-hs", "alg": "HS256"})
    with open(os.path.join(d, "jwks.json"), "w") as f:
        json.dump({"keys": [rs, es, hs]}, f)
    with open(os.path.join(d, "jwks_public.json"), "w") as f:
        json.dump({"keys": [rs, es]}, f)
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    with open(os.path.join(d, "rsa.pem"), "wb") as f:
        f.write(rsa_key.private_bytes(pem, pkcs8, none))
    with open(os.path.join(d, "ec.pem"), "wb") as f:
        f.write(ec_key.private_bytes(pem, pkcs8, none))

    base = {"iss": ISS, "aud": "orders", "sub": "alice", "iat": now, "exp": now + 300, "scope": "orders.read"}
    out = []

    def add(name, claims, key, alg, kid, **kw):
        out.append((name, jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None, **kw)))

    add("rs256", base, rsa_key, "RS256", "py-rsa")
    add("es256", base, ec_key, "ES256", "py-ec")
    add("hs256", base, secret, "HS256", "py-hs")
    add("rs256_expired", dict(base, exp=now - 3600), rsa_key, "RS256", "py-rsa")
    add("es256_other_aud", dict(base, aud=["billing", "shipping"]), ec_key, "ES256", "py-ec")
    add("es256_aud_list", dict(base, aud=["billing", "orders"]), ec_key, "ES256", "py-ec")
    # HS256 keyed with the RSA public key's PEM: the classic confusion forgery
    pub_pem = rsa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    import hashlib
    import hmac
    import base64

    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    hdr = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "py-rsa"}).encode())
    body = b64(json.dumps(base).encode())
    sig = b64(hmac.new(pub_pem, (hdr + "." + body).encode(), hashlib.sha256).digest())
    out.append(("hs256_confused", hdr + "." + body + "." + sig))
    with open(os.path.join(d, "tokens.txt"), "w") as f:
        for name, tok in out:
            f.write("%s %s\n" % (name, tok))


def serve(d):
    lock = threading.Lock()

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            with lock:
                with open(os.path.join(d, "hits.log"), "a") as f:
                    f.write(self.path + "\n")
            if self.path == "/slow":
                time.sleep(10)
            if self.path == "/jwks.json":
                try:
                    with open(os.path.join(d, "jwks.json"), "rb") as f:
                        body = f.read()
                except OSError:
                    body = None
                if body is None:
                    return self.answer(404, b"no jwks.json")
                return self.answer(200, body)
            if self.path == "/status/500":
                return self.answer(500, b"oops")
            if self.path == "/garbage":
                return self.answer(200, b"<html>not json</html>")
            if self.path == "/big":
                return self.answer(200, b'{"keys":[' + b" " * (1 << 20) + b"]}")
            return self.answer(404, b"not found")

        def answer(self, status, body):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    sys.stdout.write("%d\n" % srv.server_address[1])  # one write: the reader stops at the newline
    sys.stdout.flush()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    sys.stdin.read()  # until the test closes our stdin (or dies)
    srv.shutdown()


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "mint":
        mint(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.exit(__doc__)
