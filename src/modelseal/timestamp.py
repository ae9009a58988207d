"""Trusted time for commitments: RFC 3161 time-stamp tokens, requested over HTTP and verified offline.

A commitment's `created` field is the owner's own statement. What proves that a commitment existed at a
time is a time-stamp token from a time-stamping authority (TSA) the checker trusts, over the commitment's
digest:

- `commitment_digest(public)` = SHA-256 of the commitment's canonical JSON (keys sorted, no spaces,
  ASCII), so re-indenting the file does not change it, and any edit does;
- `request(digest)` builds the RFC 3161 `TimeStampReq` (SHA-256 imprint, a random nonce, certReq);
  `fetch(url, public)` POSTs it as `application/timestamp-query` and returns the TSA's `TimeStampResp`,
  checked against the request (imprint and nonce) before it is kept (`PUBLIC.tsr`, beside the commitment);
- `verify_token(tsr, public, trusted)` checks, with nothing but the token, the commitment and the
  certificates the checker trusts (no network): the response was granted; the token is CMS SignedData over a
  TSTInfo whose imprint is the commitment's SHA-256; the signed attributes' message digest is the TSTInfo's;
  the signature verifies with the signer's certificate; the signer certificate is bound by the ESS
  signing-certificate attribute (when present), carries the time-stamping extended key usage, was valid at
  the token's time, and is one of the trusted certificates or chains to one (each link checked with
  `verify_directly_issued_by` and valid at the token's time). Every failure is one `TimestampError` line.

ASN.1 and CMS are parsed by asn1crypto; signatures and certificates are checked by cryptography. The TSA's
clock and key are trusted: a token proves "existed by T" only as far as the checker trusts that TSA.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelSealError

MAX_TOKEN_BYTES = 1024 * 1024
MAX_CERT_BYTES = 1024 * 1024
MAX_CHAIN = 6
TIME_STAMPING_OID = "1.3.6.1.5.5.7.3.8"
CONTENT_TYPE = "application/timestamp-query"
NOT_PROVEN = "time not proven: 'created' is the owner's own statement"


class TimestampError(ModelSealError):
    """A time-stamp token is malformed, over another digest, tampered with, or signed by an untrusted,
    expired or unsuitable certificate."""


@dataclass(frozen=True)
class TimeProof:
    """A verified token: the time the TSA states, the TSA's name and the token's serial number."""

    time: _dt.datetime
    tsa: str
    serial: int
    digest: str

    def line(self) -> str:
        return (f"time: commitment existed by {self.time.isoformat()} (RFC 3161, {self.tsa}, verified)")

    def to_dict(self) -> dict[str, Any]:
        return {"proven": True, "time": self.time.isoformat(), "tsa": self.tsa, "serial": self.serial,
                "digest": self.digest, "line": self.line()}


def not_proven(reason: str) -> dict[str, Any]:
    """The time status of a verdict or check without a verified token (`reason` says what was missing)."""
    return {"proven": False, "line": f"{NOT_PROVEN} ({reason})", "reason": reason}


def canonical(public: dict[str, Any]) -> bytes:
    return json.dumps(public, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def commitment_digest(public: dict[str, Any]) -> bytes:
    """The 32-byte SHA-256 a token stamps: over the commitment's canonical JSON."""
    return hashlib.sha256(canonical(public)).digest()


def token_path(commitment_path: str | os.PathLike) -> Path:
    """Where a commitment's token lives, beside it: PUBLIC.json -> PUBLIC.tsr."""
    p = Path(commitment_path)
    return p.with_suffix(".tsr") if p.suffix == ".json" else p.with_name(p.name + ".tsr")


# ---------------------------------------------------------------------------------------------- request
def request(digest: bytes, nonce: int | None = None) -> tuple[bytes, int]:
    """The DER TimeStampReq for a SHA-256 `digest` (certReq set) and the nonce it carries."""
    from asn1crypto import algos, core, tsp

    if len(digest) != 32:
        raise TimestampError(f"a SHA-256 digest has 32 bytes, got {len(digest)}")
    nonce = secrets.randbits(63) if nonce is None else int(nonce)
    req = tsp.TimeStampReq({
        "version": 1,
        "message_imprint": tsp.MessageImprint({"hash_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
                                               "hashed_message": digest}),
        "nonce": core.Integer(nonce), "cert_req": True})
    return req.dump(), nonce


def fetch(url: str, public: dict[str, Any], timeout: float = 30.0) -> bytes:
    """Ask the TSA at `url` to stamp the commitment `public`; returns its TimeStampResp (DER) after checking
    that it was granted and answers this request (imprint and nonce). The signature is checked later, by
    `verify_token`, against the certificates a checker trusts."""
    import urllib.error
    import urllib.request

    if not url.startswith(("http://", "https://")):
        raise TimestampError(f"--tsa takes an http(s):// URL of an RFC 3161 time-stamping authority, not {url!r}")
    digest = commitment_digest(public)
    body, nonce = request(digest)
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": CONTENT_TYPE})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the user's TSA URL
            data = resp.read(MAX_TOKEN_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise TimestampError(f"the TSA at {url} answered HTTP {e.code} ({e.reason})") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise TimestampError(f"the TSA at {url} could not be reached: {getattr(e, 'reason', e)}") from None
    if len(data) > MAX_TOKEN_BYTES:
        raise TimestampError(f"the TSA's answer is larger than {MAX_TOKEN_BYTES} bytes; not a time-stamp reply")
    tst = _granted_tst_info(data)
    if bytes(tst["message_imprint"]["hashed_message"].native) != digest:
        raise TimestampError("the TSA stamped another digest than the one asked; not kept")
    got_nonce = tst["nonce"].native if tst["nonce"] is not None else None
    if got_nonce != nonce:
        raise TimestampError("the TSA's reply does not carry the request's nonce; not kept")
    return data


# ---------------------------------------------------------------------------------------------- verify
def _load_resp(data: bytes) -> Any:
    from asn1crypto import tsp

    if not isinstance(data, (bytes, bytearray)) or not data:
        raise TimestampError("the time-stamp token is empty")
    if len(data) > MAX_TOKEN_BYTES:
        raise TimestampError(f"the time-stamp token is larger than {MAX_TOKEN_BYTES} bytes")
    try:
        resp = tsp.TimeStampResp.load(bytes(data), strict=True)
        status = resp["status"]["status"].native
    except Exception as e:  # noqa: BLE001 - asn1crypto raises ValueError/TypeError/its own on bad DER
        raise TimestampError(f"the time-stamp token is not an RFC 3161 TimeStampResp ({type(e).__name__})") from None
    if status not in ("granted", "granted_with_mods"):
        raise TimestampError(f"the TSA did not grant the time-stamp (status {status!r})")
    return resp


def _signed_data(resp: Any) -> Any:
    try:
        token = resp["time_stamp_token"]
        if token["content_type"].native != "signed_data":
            raise ValueError("not signed data")
        sd = token["content"]
        if sd["encap_content_info"]["content_type"].native != "tst_info":
            raise ValueError("not a TSTInfo")
        return sd
    except Exception as e:  # noqa: BLE001
        raise TimestampError(f"the time-stamp token holds no signed TSTInfo ({first(e)})") from None


def _granted_tst_info(data: bytes) -> Any:
    sd = _signed_data(_load_resp(data))
    try:
        tst = sd["encap_content_info"]["content"].parsed
        tst.native  # noqa: B018 - parse every field now, so a malformed one fails here
    except Exception as e:  # noqa: BLE001
        raise TimestampError(f"the token's TSTInfo is malformed ({first(e)})") from None
    return tst


def first(e: BaseException) -> str:
    text = str(e).splitlines()
    return (text[0][:120] if text and text[0] else type(e).__name__)


def load_certs(paths: list[str | os.PathLike]) -> list[Any]:
    """The checker's trusted TSA certificates (PEM or DER files; a PEM file may hold several)."""
    from cryptography import x509

    out: list[Any] = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise TimestampError(f"--tsa-cert {path}: no such file")
        if path.stat().st_size > MAX_CERT_BYTES:
            raise TimestampError(f"--tsa-cert {path}: larger than {MAX_CERT_BYTES} bytes; not a certificate")
        raw = path.read_bytes()
        try:
            certs = (x509.load_pem_x509_certificates(raw) if b"-----BEGIN" in raw
                     else [x509.load_der_x509_certificate(raw)])
        except ValueError as e:
            raise TimestampError(f"--tsa-cert {path}: not a PEM or DER X.509 certificate ({first(e)})") from None
        out.extend(certs)
    return out


def as_certs(items: Any) -> list[Any]:
    """Trusted certificates from paths (PEM/DER files) or cryptography certificates, in order."""
    if items is None:
        return []
    if isinstance(items, (str, os.PathLike)) or hasattr(items, "public_key"):
        items = [items]
    out: list[Any] = []
    for item in items:
        out.extend([item] if hasattr(item, "public_key") else load_certs([item]))
    return out


def _hash(name: str) -> Any:
    from cryptography.hazmat.primitives import hashes

    table: dict[str, Any] = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512(),
                             "sha224": hashes.SHA224(), "sha1": hashes.SHA1()}
    if name not in table:
        raise TimestampError(f"the token uses the digest algorithm {name!r}, which this checker does not accept")
    return table[name]


def _verify_signature(cert: Any, signature: bytes, data: bytes, algo: str, digest: str) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey) and algo in ("rsassa_pkcs1v15", "rsa"):
            key.verify(signature, data, padding.PKCS1v15(), _hash(digest))
        elif isinstance(key, ec.EllipticCurvePublicKey) and algo == "ecdsa":
            key.verify(signature, data, ec.ECDSA(_hash(digest)))
        else:
            raise TimestampError(f"the token is signed with {algo!r} by a {type(key).__name__}; not accepted")
    except InvalidSignature:
        raise TimestampError("the token's signature does not verify: it was tampered with or signed by another "
                             "key than its certificate's") from None


def _valid_at(cert: Any, when: _dt.datetime, what: str) -> None:
    lo, hi = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not lo <= when <= hi:
        state = "expired" if when > hi else "not yet valid"
        raise TimestampError(f"the {what} certificate ({_name(cert)}) was {state} at the token's time "
                             f"{when.isoformat()} (valid {lo.isoformat()} to {hi.isoformat()})")


def _name(cert: Any) -> str:
    from cryptography.x509.oid import NameOID

    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cn[0].value) if cn else cert.subject.rfc4514_string()


def _signer_cert(si: Any, candidates: list[Any]) -> Any:
    from asn1crypto import x509 as ax509
    from cryptography.hazmat.primitives.serialization import Encoding

    sid = si["sid"]
    for cert in candidates:
        ac = ax509.Certificate.load(cert.public_bytes(Encoding.DER))
        if sid.name == "issuer_and_serial_number":
            if ac.serial_number == sid.chosen["serial_number"].native and ac.issuer == sid.chosen["issuer"]:
                return cert
        elif ac.key_identifier == sid.chosen.native:
            return cert
    raise TimestampError("the token's signer certificate is neither in the token nor among the trusted ones")


def _chain_to_trusted(cert: Any, pool: list[Any], trusted: list[Any], when: _dt.datetime) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    trusted_der = {t.public_bytes(Encoding.DER) for t in trusted}
    current = cert
    for _ in range(MAX_CHAIN):
        if current.public_bytes(Encoding.DER) in trusted_der:
            return
        issuers = [c for c in [*trusted, *pool] if c.subject == current.issuer and c is not current]
        for issuer in issuers:
            try:
                current.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, Exception):  # noqa: BLE001 - InvalidSignature and friends
                continue
            _valid_at(issuer, when, "issuing")
            current = issuer
            break
        else:
            raise TimestampError(f"the token's signer ({_name(cert)}) is not trusted: it does not chain to any "
                                 "--tsa-cert the checker gave")
    raise TimestampError(f"the token's certificate chain is longer than {MAX_CHAIN}")


def _attrs(si: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in si["signed_attrs"]:
        out[attr["type"].native] = attr["values"][0]
    return out


def verify_token(data: bytes, public: dict[str, Any], trusted: list[Any]) -> TimeProof:
    """Verify an RFC 3161 token over `public` offline against the `trusted` certificates (cryptography
    `x509.Certificate`s). Returns the proven time; every failure is one TimestampError line."""
    try:
        return _verify_token(data, public, trusted)
    except TimestampError:
        raise
    except Exception as e:  # noqa: BLE001 - asn1crypto parses lazily: a malformed field fails where it is read
        raise TimestampError(f"the time-stamp token is malformed ({first(e)})") from None


def _verify_token(data: bytes, public: dict[str, Any], trusted: list[Any]) -> TimeProof:
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID

    if not trusted:
        raise TimestampError("no trusted TSA certificate given (--tsa-cert): the token cannot be checked")
    resp = _load_resp(data)
    sd = _signed_data(resp)
    tst = _granted_tst_info(data)
    try:
        imprint = tst["message_imprint"]
        h_algo = imprint["hash_algorithm"]["algorithm"].native
        stamped = bytes(imprint["hashed_message"].native)
        when = tst["gen_time"].native
        serial = int(tst["serial_number"].native)
        tsa_field = tst["tsa"].native if tst["tsa"] is not None and tst["tsa"].native else None
    except Exception as e:  # noqa: BLE001
        raise TimestampError(f"the token's TSTInfo is malformed ({first(e)})") from None
    want = commitment_digest(public)
    if h_algo != "sha256" or stamped != want:
        raise TimestampError("the token stamps another digest than this commitment's SHA-256: it belongs to "
                             "another commitment (or the commitment was edited after it was stamped)")
    if not isinstance(when, _dt.datetime):
        raise TimestampError("the token's time is malformed")
    when = when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)
    infos = sd["signer_infos"]
    if len(infos) != 1:
        raise TimestampError(f"the token has {len(infos)} signers; RFC 3161 tokens have one")
    si = infos[0]
    pool: list[Any] = []
    try:
        for c in sd["certificates"] or []:
            if c.name == "certificate":
                pool.append(x509.load_der_x509_certificate(c.chosen.dump()))
        digest_name = si["digest_algorithm"]["algorithm"].native
        attrs = _attrs(si)
        signed = si["signed_attrs"].dump()
        sig_algo = si["signature_algorithm"].signature_algo
        signature = bytes(si["signature"].native)
        content = sd["encap_content_info"]["content"].contents
        listed = [a["algorithm"].native for a in sd["digest_algorithms"]]
    except TimestampError:
        raise
    except Exception as e:  # noqa: BLE001
        raise TimestampError(f"the token's signer information is malformed ({first(e)})") from None
    if digest_name not in listed:
        raise TimestampError("the token's signer digest algorithm is not among its listed ones: it was tampered with")
    if attrs.get("content_type") is None or attrs["content_type"].native != "tst_info":
        raise TimestampError("the token's signed attributes do not name a TSTInfo content")
    md = attrs.get("message_digest")
    h = hashlib.new(digest_name) if digest_name in ("sha256", "sha384", "sha512", "sha224", "sha1") else None
    if h is None:
        raise TimestampError(f"the token uses the digest algorithm {digest_name!r}; not accepted")
    h.update(content)
    if md is None or bytes(md.native) != h.digest():
        raise TimestampError("the token's TSTInfo does not match its signed message digest: it was tampered with")
    cert = _signer_cert(si, [*pool, *trusted])
    # the signed attributes are signed as a DER SET OF (tag 0x31), not with their implicit [0] tag
    _verify_signature(cert, signature, b"\x31" + signed[1:], sig_algo, digest_name)
    _check_ess(attrs, cert)
    try:
        eku = cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
        usages = {u.dotted_string for u in eku}
    except x509.ExtensionNotFound:
        usages = set()
    if TIME_STAMPING_OID not in usages:
        raise TimestampError(f"the signer certificate ({_name(cert)}) is not a time-stamping certificate (no "
                             "timeStamping extended key usage)")
    _valid_at(cert, when, "TSA")
    _chain_to_trusted(cert, pool, trusted, when)
    tsa = _name(cert)
    if isinstance(tsa_field, dict) and tsa_field:
        tsa = str(tsa_field.get("common_name", tsa))
    return TimeProof(time=when, tsa=tsa, serial=serial, digest=want.hex())


def _check_ess(attrs: dict[str, Any], cert: Any) -> None:
    """The ESS signing-certificate attribute (v1: SHA-1, v2: SHA-256 by default) must name the signer's
    certificate, so no other certificate with the same key can be substituted."""
    from cryptography.hazmat.primitives.serialization import Encoding

    der = cert.public_bytes(Encoding.DER)
    if "signing_certificate_v2" in attrs:
        ids = attrs["signing_certificate_v2"]["certs"]
        algo = ids[0]["hash_algorithm"]["algorithm"].native if ids[0]["hash_algorithm"] else "sha256"
        if bytes(ids[0]["cert_hash"].native) != hashlib.new(algo, der).digest():
            raise TimestampError("the token's signing-certificate attribute names another certificate")
    elif "signing_certificate" in attrs:
        ids = attrs["signing_certificate"]["certs"]
        if bytes(ids[0]["cert_hash"].native) != hashlib.sha1(der).digest():  # noqa: S324 - ESS v1 is SHA-1
            raise TimestampError("the token's signing-certificate attribute names another certificate")


# ---------------------------------------------------------------------------------------------- status
def read_token(path: str | os.PathLike) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise TimestampError(f"time-stamp token {p}: no such file")
    if p.stat().st_size > MAX_TOKEN_BYTES:
        raise TimestampError(f"time-stamp token {p} is larger than {MAX_TOKEN_BYTES} bytes")
    return p.read_bytes()


def status(public: dict[str, Any] | None, token: str | os.PathLike | bytes | None,
           trusted: list[Any] | None) -> dict[str, Any]:
    """The time line of a verdict or check: proven (a token over `public` that verifies against `trusted`)
    or not proven, with why. A token that is given and fails raises TimestampError."""
    if public is None:
        return not_proven("no commitment given")
    if token is None:
        return not_proven("no RFC 3161 token over the commitment")
    if not trusted:
        return not_proven("no trusted TSA certificate given (--tsa-cert)")
    data = token if isinstance(token, (bytes, bytearray)) else read_token(token)
    return verify_token(bytes(data), public, trusted).to_dict()


def parse_since(text: str) -> _dt.datetime:
    """A `--suspect-since` date: ISO 8601 date or date-time (UTC when no zone is given)."""
    try:
        when = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ModelSealError(f"--suspect-since takes an ISO 8601 date or date-time (2026-01-31 or "
                             f"2026-01-31T12:00:00Z), not {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)


__all__ = ["TimestampError", "TimeProof", "commitment_digest", "request", "fetch", "verify_token", "load_certs",
           "status", "token_path", "parse_since", "not_proven", "NOT_PROVEN"]
