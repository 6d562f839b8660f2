"""deploy/: the documented ways to run the sidecar beside a service keep
working. deploy/mesh-demo.sh --check runs two services with their sidecars
on loopback, mTLS between the sidecars, and checks what its README promises
(caller identity reaches the app, a forged identity header is replaced, a
certificate not on the allow list gets 403, no client certificate fails the
handshake, /certs). It uses fixed ports below the ephemeral range
(8081, 9201, 15443, 19100, 19101), which harness.free_port never hands out.
"""
import os
import subprocess
import unittest

import harness


class MeshDemoTest(unittest.TestCase):

    def test_mesh_demo_checks_pass(self):
        binary = harness.sidecar_binary()
        env = dict(os.environ, SIDECAR=binary)
        p = subprocess.run([os.path.join(harness.ROOT, "deploy", "mesh-demo.sh"), "--check"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=90)
        out = p.stdout.decode(errors="replace")
        self.assertEqual(p.returncode, 0, out)
        # Five checks, each reported ok: a check that silently vanished would
        # also be a failure of the demo.
        self.assertEqual(out.count("\nok "), 5, out)
        self.assertNotIn("FAILED", out)

    def test_mesh_demo_fails_without_a_binary(self):
        env = dict(os.environ, SIDECAR="/nonexistent/sidecar")
        p = subprocess.run([os.path.join(harness.ROOT, "deploy", "mesh-demo.sh"), "--check"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual(p.returncode, 2)
        self.assertIn("no sidecar binary", p.stdout.decode(errors="replace"))


if __name__ == "__main__":
    unittest.main()
