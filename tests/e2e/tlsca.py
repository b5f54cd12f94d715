"""
tlsca.py: test certificates for the TLS end-to-end tests, made with the
openssl CLI (EC P-256 keys: fast).

make_pki(dir, names) writes, in dir:
  ca.pem, ca.key            CA 1 ("ferry e2e CA 1")
  server.pem, server.key    a server certificate signed by CA 1 for localhost,
                            127.0.0.1 and every name in names (explicit names:
                            curl refuses a *.localhost wildcard)
  ca2.pem, ca2.key          CA 2, unrelated to CA 1
  server2.pem, server2.key  the same names, signed by CA 2
  ocsp.der                  a DER OCSP response from CA 1 saying server.pem is
                            good (openssl ocsp, index.txt in CA-db format)
and returns a dict of those paths.
"""

import datetime
import os
import subprocess

OPENSSL = "openssl"


def _run(args, cwd, timeout=60):
    p = subprocess.run([OPENSSL] + args, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError("openssl %s: exit %d\n%s%s" % (" ".join(args), p.returncode,
                                                            p.stdout.decode(errors="replace"),
                                                            p.stderr.decode(errors="replace")))
    return p.stdout.decode("utf-8", "replace")


EXT = """
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[srv]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {san}
"""


def _key(d, name):
    _run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name], d)
    os.chmod(os.path.join(d, name), 0o600)


def _ca(d, stem, cn):
    _key(d, stem + ".key")
    _run(["req", "-new", "-key", stem + ".key", "-subj", "/CN=" + cn, "-out", stem + ".csr"], d)
    _run(["x509", "-req", "-in", stem + ".csr", "-signkey", stem + ".key", "-days", "30", "-sha256",
          "-set_serial", "1", "-extfile", "ext.cnf", "-extensions", "ca", "-out", stem + ".pem"], d)


def _server(d, stem, ca, serial):
    _key(d, stem + ".key")
    _run(["req", "-new", "-key", stem + ".key", "-subj", "/CN=localhost", "-out", stem + ".csr"], d)
    _run(["x509", "-req", "-in", stem + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key", "-days", "30",
          "-sha256", "-set_serial", "0x%x" % serial, "-extfile", "ext.cnf", "-extensions", "srv",
          "-out", stem + ".pem"], d)


def _ocsp(d, cert, ca, serial):
    end = _run(["x509", "-in", cert, "-noout", "-enddate"], d).strip().split("=", 1)[1]
    t = datetime.datetime.strptime(end.replace(" GMT", ""), "%b %d %H:%M:%S %Y")
    with open(os.path.join(d, "index.txt"), "w") as f:
        f.write("V\t%s\t\t%X\tunknown\t/CN=localhost\n" % (t.strftime("%y%m%d%H%M%SZ"), serial))
    _run(["ocsp", "-issuer", ca + ".pem", "-cert", cert, "-no_nonce", "-reqout", "ocsp-req.der"], d)
    _run(["ocsp", "-index", "index.txt", "-rsigner", ca + ".pem", "-rkey", ca + ".key", "-CA", ca + ".pem",
          "-reqin", "ocsp-req.der", "-respout", "ocsp.der", "-ndays", "7"], d)


def make_pki(d, names):
    os.makedirs(d, exist_ok=True)
    san = ",".join(["DNS:localhost", "IP:127.0.0.1"] + ["DNS:%s" % n for n in names])
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write(EXT.format(san=san))
    _ca(d, "ca", "ferry e2e CA 1")
    _ca(d, "ca2", "ferry e2e CA 2")
    _server(d, "server", "ca", 0x1001)
    _server(d, "server2", "ca2", 0x2001)
    _ocsp(d, "server.pem", "ca", 0x1001)
    out = {}
    for n in ("ca", "ca2", "server", "server2"):
        out[n] = os.path.join(d, n + ".pem")
        out[n + "_key"] = os.path.join(d, n + ".key")
    out["ocsp"] = os.path.join(d, "ocsp.der")
    return out
