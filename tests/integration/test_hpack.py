"""How the sidecar represents header fields in the HPACK blocks it sends
(RFC 7541 6), seen on the wire by peers written by hand
(tests/peers/h2_raw.py: field_forms() reads each field's representation):

- a field a peer sent never-indexed (6.2.3) is sent on never-indexed, in a
  request head and its trailers (caller -> upstream) and in a response head
  and its trailers (upstream -> caller): RFC 7541 7.1.3 forbids an
  intermediary to re-encode it in a form that could index it;
- the fields with a new value on every request (x-request-id, grpc-timeout)
  are sent without a table entry, yet named by a table index: the first
  request on an upstream connection adds an entry carrying the name, the
  next ones refer to it instead of spelling the name out again, and every
  1,024th request adds an entry again (the old one may have been evicted).
"""
import unittest

import harness
from harness import SidecarTestCase, free_port

from h2_raw import H2Conn, H2Upstream

GRPC_MESSAGE = b"\x00\x00\x00\x00\x03abc"


def forms_by_name(headers, forms):
    """{name: (form, name_by_index)} of a block (the last field of a name wins)."""
    assert len(headers) == len(forms), (headers, forms)
    return {n: f for (n, _), f in zip(headers, forms)}


class HpackFormsTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.up = H2Upstream(name="h2")
        cls.up.start()
        cls.addClassCleanup(cls.up.stop)
        cls.gup = H2Upstream(name="grpc")
        cls.gup.start()
        cls.addClassCleanup(cls.gup.stop)
        cls.port, cls.gport = free_port(), free_port()
        cls.sc = cls.class_sidecar(harness.base_config(free_port(), [
            harness.upstream("h2", "http2", cls.port, [cls.up.port]),
            harness.upstream("grpc", "grpc", cls.gport, [cls.gup.port]),
        ], workers=1))

    def test_callers_never_indexed_fields_reach_the_upstream_never_indexed(self):
        with H2Conn(self.port) as c:
            sid = c.request([(":method", "POST"), (":scheme", "http"), (":path", "/echo?never"),
                             (":authority", "a"), ("x-secret", "head-secret", True), ("x-plain", "1")],
                            body=b"x", trailers=[("x-trailer-secret", "trailer-secret", True)])
            st = c.response(sid)
        self.assertEqual(st.status, 200, st)
        rec = self.up.last("/echo?never")
        head = forms_by_name(rec["headers"], rec["forms"])
        self.assertEqual(head["x-secret"][0], "never", rec)
        self.assertNotEqual(head["x-plain"][0], "never", rec)
        trailers = forms_by_name(rec["trailers"], rec["trailer_forms"])
        self.assertEqual(trailers["x-trailer-secret"][0], "never", rec)

    def test_upstreams_never_indexed_fields_reach_the_caller_never_indexed(self):
        with H2Conn(self.port) as c:
            st = c.response(c.get("/never-indexed"))
        self.assertEqual(st.status, 200, st)
        self.assertEqual(st.header("x-secret"), "head-secret")
        self.assertEqual(forms_by_name(st.headers, st.head_forms)["x-secret"][0], "never", st)
        self.assertEqual(dict(st.trailers).get("x-trailer-secret"), "trailer-secret", st)
        self.assertEqual(forms_by_name(st.trailers, st.trailer_forms)["x-trailer-secret"][0], "never", st)

    def test_per_request_fields_are_named_by_index_after_the_first_request(self):
        n = 6
        with H2Conn(self.gport) as c:
            for i in range(n):
                extra = [("x-request-id", "caller-id-%d" % i)] if i >= n - 2 else []
                if i in (2, 3):
                    # a caller's own deadline, shorter than the policy's 5 s
                    extra.append(("grpc-timeout", "%dm" % (3000 + i)))
                sid = c.request([(":method", "POST"), (":scheme", "http"), (":path", "/grpc-trailers?%d" % i),
                                 (":authority", "a"), ("content-type", "application/grpc"), ("te", "trailers")]
                                + extra, body=GRPC_MESSAGE)
                st = c.response(sid)
                self.assertEqual(st.status, 200, st)
        recs = [r for r in self.gup.requests if r["path"].startswith("/grpc-trailers?")]
        self.assertEqual(len(recs), n, recs)
        self.assertEqual(len({r["conn"] for r in recs}), 1, "one upstream connection expected: %s" % recs)
        whole = dict(recs[0]["headers"])["grpc-timeout"]
        self.assertEqual(whole, "5000000u", "the policy's whole 5 s request timeout")
        for i, rec in enumerate(recs):
            forms = forms_by_name(rec["headers"], rec["forms"])
            hdrs = dict(rec["headers"])
            self.assertIn("grpc-timeout", forms, rec)
            if i >= n - 2:
                self.assertEqual(hdrs["x-request-id"], "caller-id-%d" % i, rec)
            for name in ("x-request-id", "grpc-timeout"):
                if i == 0:
                    # the connection's first request: an entry whose name the next ones use
                    self.assertEqual(forms[name], ("incremental", False), (name, rec))
                elif name == "grpc-timeout" and i not in (2, 3):
                    # the policy's whole timeout again: the entry itself
                    self.assertEqual(hdrs[name], whole, rec)
                    self.assertEqual(forms[name], ("indexed", True), (name, i, rec))
                else:
                    # a value never seen again (a request ID, what is left
                    # of a caller's deadline): no entry, the name by index
                    self.assertEqual(forms[name], ("never", True), (name, i, rec))
                    if name == "grpc-timeout":
                        self.assertNotEqual(hdrs[name], whole, rec)


class HpackRenewalTest(SidecarTestCase):
    """Every 1,024th request on an upstream connection renews the table
    entries of the per-request fields (the dynamic table may have dropped
    them since the first request). A sidecar and an upstream of its own, so
    that the connection carries only this test's requests."""

    EVERY = 1024

    @classmethod
    def setUpClass(cls):
        cls.gup = H2Upstream(name="grpc")
        cls.gup.start()
        cls.addClassCleanup(cls.gup.stop)
        cls.gport = free_port()
        cls.sc = cls.class_sidecar(harness.base_config(free_port(), [
            harness.upstream("grpc", "grpc", cls.gport, [cls.gup.port]),
        ], workers=1))

    def test_entries_are_renewed_every_1024th_request(self):
        n, batch = self.EVERY + 2, 32
        def head(i):
            return [(":method", "POST"), (":scheme", "http"), (":path", "/grpc-trailers?%d" % i),
                    (":authority", "a"), ("content-type", "application/grpc"), ("te", "trailers")]
        with H2Conn(self.gport) as c:
            for start in range(0, n, batch):
                # a few calls in flight at a time: one upstream connection
                # still carries them, in the order they were sent
                sids = [c.request(head(i), body=GRPC_MESSAGE)
                        for i in range(start, min(n, start + batch))]
                for sid in sids:
                    st = c.response(sid)
                    self.assertEqual(st.status, 200, st)
        recs = [r for r in self.gup.requests if r["path"].startswith("/grpc-trailers?")]
        self.assertEqual(len(recs), n)
        self.assertEqual(len({r["conn"] for r in recs}), 1, "one upstream connection expected")
        first = dict(recs[0]["headers"])
        for i in (0, 1, self.EVERY - 1, self.EVERY, self.EVERY + 1):
            forms = forms_by_name(recs[i]["headers"], recs[i]["forms"])
            values = dict(recs[i]["headers"])
            for name in ("x-request-id", "grpc-timeout"):
                form, by_index = forms[name]
                if i and values[name] == first[name]:
                    # The same value as the first request's (grpc-timeout:
                    # the policy's whole timeout, sent with an entry): that
                    # entry is still in the table and names the field.
                    self.assertEqual(name, "grpc-timeout")
                    self.assertEqual((form, by_index), ("indexed", True), (name, i))
                elif i % self.EVERY:
                    self.assertEqual((form, by_index), ("never", True), (name, i))
                else:
                    # an entry again (named by index or not: the old one
                    # may still be in the table)
                    self.assertEqual(form, "incremental", (name, i))
                    self.assertTrue(i or not by_index, (name, i))


if __name__ == "__main__":
    unittest.main()
