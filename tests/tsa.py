"""A real RFC 3161 time-stamping authority for tests: OpenSSL's `openssl ts -reply` behind a small HTTP
endpoint on 127.0.0.1, with a CA and a TSA certificate the test makes (cryptography).

`TSA(folder, expired=False, eku=True)` makes the certificates; `with tsa.serve() as url:` runs the endpoint
(a thread, stopped on exit). Each request runs one `openssl ts -reply` (bounded by a time-out).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_CONFIG = """\
[ tsa ]
default_tsa = tsa_config1

[ tsa_config1 ]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem

signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
other_policies = 1.2.3.4.5.6
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                                                        "modelseal tests")])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


class TSA:
    """A CA certificate (`ca_pem`, what a checker trusts) and a TSA certificate it issued (`tsa_pem`)."""

    def __init__(self, folder: Path, *, name: str = "modelseal test TSA", expired: bool = False,
                 eku: bool = True) -> None:
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (x509.CertificateBuilder().subject_name(_name(f"{name} root")).issuer_name(_name(f"{name} root"))
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(days=3650)).not_valid_after(now + dt.timedelta(days=3650))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA256()))
        tsa_key = ec.generate_private_key(ec.SECP256R1())
        lo, hi = ((now - dt.timedelta(days=400), now - dt.timedelta(days=30)) if expired
                  else (now - dt.timedelta(days=1), now + dt.timedelta(days=365)))
        builder = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca.subject)
                   .public_key(tsa_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(lo).not_valid_after(hi)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if eku:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]),
                                            critical=True)
        tsa = builder.sign(ca_key, hashes.SHA256())
        self.ca_pem = self.dir / "ca.pem"
        self.tsa_pem = self.dir / "tsa.pem"
        self.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.tsa_pem.write_bytes(tsa.public_bytes(serialization.Encoding.PEM))
        _write_key(self.dir / "tsa.key", tsa_key)
        (self.dir / "serial").write_text("01\n")
        self.config = self.dir / "tsa.cnf"
        self.config.write_text(_CONFIG.format(dir=self.dir))
        self.requests = 0

    def reply(self, query: bytes) -> bytes:
        """`openssl ts -reply` on one DER TimeStampReq."""
        with tempfile.TemporaryDirectory() as tmp:
            q, r = Path(tmp) / "q.tsq", Path(tmp) / "r.tsr"
            q.write_bytes(query)
            subprocess.run(["openssl", "ts", "-reply", "-config", str(self.config), "-queryfile", str(q),
                            "-out", str(r)], check=True, capture_output=True, timeout=30)
            return r.read_bytes()

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        tsa = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(min(n, 1 << 20))
                if self.headers.get("Content-Type") != "application/timestamp-query":
                    self.send_error(415, "expected application/timestamp-query")
                    return
                tsa.requests += 1
                try:
                    data = tsa.reply(body)
                except subprocess.SubprocessError:
                    self.send_error(500, "openssl ts -reply failed")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/tsa"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
