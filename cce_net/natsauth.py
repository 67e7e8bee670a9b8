"""The bus's identities and TLS for a stack we run ourselves: nats-server's decentralized authentication (an operator,
an account for cce-network with JetStream, a system account; a user JWT per identity carrying the permissions of
`schemas/permissions.py`, signed with the account's nkey), a private CA and the server's certificate, and the server
configuration that uses them. Everything lives in one directory, private files mode 0600; keys are made once and
kept, so a restarted stack keeps its identities.

The JWTs are the standard NATS ones (`ed25519-nkey`), the credentials files the standard `.creds` form, so any NATS
client and tool can use them. Revoking an identity adds it to the account's revocations (the server is then told to
reload its configuration); user JWTs expire after `validity`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nkeys

from chassis.config import ChassisSettings
from chassis.creds import creds_claims
from chassis.creds import jwt_claims as creds_claims_of_jwt
from schemas.permissions import ADMIN_IDENTITY, Identity, identities, node_identity, permissions

ACCOUNT = "CCE"
SYSTEM_ACCOUNT = "SYS"
MAX_PAYLOAD = 1024 * 1024  # bytes; a request larger than this is refused by the server
ONE_YEAR_S = 365 * 24 * 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def encode_jwt(claims: dict[str, Any], signer: nkeys.KeyPair) -> str:
    """A NATS JWT: header and claims as base64url JSON, signed with the issuer's nkey (ed25519)."""
    body = dict(claims, iat=int(time.time()), jti="")
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()).decode()
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(body, sort_keys=True).encode())
    return f"{head}.{payload}.{_b64(signer.sign(f'{head}.{payload}'.encode()))}"


def creds_text(jwt: str, seed: bytes) -> str:
    return (f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n")


def _private(path: Path, data: str | bytes) -> Path:
    """Write a secret: created 0600 (never readable by others, not even for a moment), replaced atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)
    return path


@dataclass
class BusSecurity:
    """The identities and TLS material of one bus, kept in `dir`."""

    dir: Path
    validity_s: int = ONE_YEAR_S
    revoked: dict[str, int] = field(default_factory=dict)  # user public key -> revoked at (unix s)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        self.operator = self._keypair("operator", nkeys.PREFIX_BYTE_OPERATOR)
        self.account = self._keypair("account", nkeys.PREFIX_BYTE_ACCOUNT)
        self.system = self._keypair("system-account", nkeys.PREFIX_BYTE_ACCOUNT)
        revoked = self.dir / "revoked.json"
        if revoked.exists():
            self.revoked = {k: int(v) for k, v in json.loads(revoked.read_text()).items()}

    # ---- keys and identities ---------------------------------------------------------------------------------------

    def _keypair(self, name: str, prefix: int) -> nkeys.KeyPair:
        path = self.dir / f"{name}.nk"
        if not path.exists():
            _private(path, nkeys.encode_seed(os.urandom(32), prefix))
        return nkeys.from_seed(bytearray(path.read_bytes().strip()))

    def creds_path(self, identity: Identity) -> Path:
        return self.dir / f"{identity.name}.creds"

    def issue(self, identity: Identity, validity_s: int | None = None) -> Path:
        """The identity's credentials file (a new user key and JWT each time: an older file of it stays valid until
        revoked or expired)."""
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        user = nkeys.from_seed(bytearray(seed))
        perms = permissions(identity)
        nats: dict[str, Any] = {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": MAX_PAYLOAD,
                                "pub": {"allow": list(perms.publish)}, "sub": {"allow": list(perms.subscribe)}}
        if perms.allow_responses:
            nats["resp"] = {"max": 1, "ttl": 0}
        claims: dict[str, Any] = {"iss": self._pub(self.account), "sub": user.public_key.decode(),
                                  "name": identity.name, "nats": nats}
        validity = self.validity_s if validity_s is None else validity_s
        if validity:
            claims["exp"] = int(time.time()) + validity
        return _private(self.creds_path(identity), creds_text(encode_jwt(claims, self.account), seed))

    def ensure(self, nodes: list[str]) -> None:
        """Credentials for every control-plane service, the admin and each node that has none, or whose permissions
        are no longer those the contract gives it (a new bucket or subject); TLS material."""
        for identity in [*identities(()), *(node_identity(n) for n in nodes)]:
            if not self.current(identity):
                self.issue(identity)
        self.ensure_tls()

    def current(self, identity: Identity) -> bool:
        """Whether the identity has credentials carrying the permissions the contract gives it now."""
        path = self.creds_path(identity)
        if not path.exists():
            return False
        perms = permissions(identity)
        nats = creds_claims(path).get("nats") or {}
        return bool((nats.get("pub") or {}).get("allow") == list(perms.publish)
                    and (nats.get("sub") or {}).get("allow") == list(perms.subscribe))

    def revoke(self, identity: Identity) -> str:
        """Revoke the identity's current credentials (the server refuses them once it reloads its configuration);
        returns the revoked user's public key."""
        user = self.user_of(identity)
        self.revoked[user] = int(time.time()) + 1  # JWTs issued up to now are revoked
        _private(self.dir / "revoked.json", json.dumps(self.revoked))
        return user

    def user_of(self, identity: Identity) -> str:
        return str(creds_claims(self.creds_path(identity))["sub"])

    @staticmethod
    def _pub(keypair: nkeys.KeyPair) -> str:
        return str(keypair.public_key.decode())

    # ---- the server's side -----------------------------------------------------------------------------------------

    def _signed(self, name: str, claims: dict[str, Any], signer: nkeys.KeyPair) -> str:
        """A JWT kept in `<name>.jwt` and re-signed only when its claims change: the server refuses to reload a
        configuration whose operator changed, and a changed account JWT is what carries a revocation."""
        path = self.dir / f"{name}.jwt"
        if path.exists():
            token = path.read_text().strip()
            kept = creds_claims_of_jwt(token)
            if {k: kept.get(k) for k in claims} == claims:
                return token
        token = encode_jwt(claims, signer)
        path.write_text(token + "\n")
        return token

    def server_config(self, *, host: str, port: int, store_dir: Path, name: str, tls: bool = True,
                      http_port: int = 0) -> str:
        op, acc, sys_acc = self._pub(self.operator), self._pub(self.account), self._pub(self.system)
        limits: dict[str, Any] = {"subs": -1, "data": -1, "payload": MAX_PAYLOAD, "imports": -1, "exports": -1,
                                  "wildcards": True, "conn": -1, "leaf": -1}
        operator_jwt = self._signed("operator", {"iss": op, "sub": op, "name": "cce-network", "nats": {
            "type": "operator", "version": 2, "system_account": sys_acc}}, self.operator)
        system_jwt = self._signed("system-account", {"iss": op, "sub": sys_acc, "name": SYSTEM_ACCOUNT, "nats": {
            "type": "account", "version": 2, "limits": limits}}, self.operator)
        account: dict[str, Any] = {"type": "account", "version": 2, "limits": {
            **limits, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}}
        if self.revoked:
            account["revocations"] = dict(self.revoked)
        account_jwt = self._signed("account", {"iss": op, "sub": acc, "name": ACCOUNT, "nats": account},
                                   self.operator)
        lines = [
            f"server_name: {json.dumps(name)}",
            f"listen: {json.dumps(f'{host}:{port}')}",
            f"max_payload: {MAX_PAYLOAD}",
            "max_control_line: 65536",  # a CONNECT carries the user JWT, and least privilege makes it long
            f"operator: {operator_jwt}",
            f"system_account: {sys_acc}",
            "resolver: MEMORY",
            "resolver_preload: {",
            f"  {sys_acc}: {system_jwt}",
            f"  {acc}: {account_jwt}",
            "}",
            f"jetstream {{ store_dir: {json.dumps(str(store_dir))} }}",
        ]
        if http_port:
            lines.append(f"http: {json.dumps(f'{host}:{http_port}')}")
        if tls:
            lines.append(f"tls {{ cert_file: {json.dumps(str(self.server_cert))}, "
                         f"key_file: {json.dumps(str(self.server_key))}, timeout: 5 }}")
        return "\n".join(lines) + "\n"

    # ---- TLS -------------------------------------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server-key.pem"

    def ensure_tls(self, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> None:
        if not (self.ca_file.exists() and self.server_cert.exists() and self.server_key.exists()):
            make_ca_and_server_cert(self.dir, hosts)


def make_ca_and_server_cert(out: Path, hosts: tuple[str, ...], days: int = 825) -> None:
    """A private CA (ca.pem, its key ca-key.pem) and a server certificate for `hosts` it signs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cce-network bus CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cce-network nats-server")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _private(out / "ca-key.pem", pem_key(ca_key))
    _private(out / "server-key.pem", pem_key(key))
    (out / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class BusAccess:
    """How the processes of a stack reach its bus: the URL, and (secured) the directory of `<identity>.creds` files
    and the CA that signed the server's certificate. Without a creds directory, every process connects anonymously
    (a stack run with `--insecure`, or a NATS_URL server without authentication)."""

    url: str
    creds_dir: Path | None = None
    ca: Path | None = None
    replicas: int = 1  # of every stream and bucket (3 on a cluster)

    @property
    def secured(self) -> bool:
        return self.creds_dir is not None

    def creds(self, identity: Identity) -> Path | None:
        return self.creds_dir / f"{identity.name}.creds" if self.creds_dir is not None else None

    def env(self, identity: Identity) -> dict[str, str]:
        env = {"CCE_NATS_URL": self.url, "CCE_KV_REPLICAS": str(self.replicas)}
        creds = self.creds(identity)
        if creds is not None:
            env["CCE_NATS_CREDS"] = str(creds)
        if self.ca is not None:
            env["CCE_NATS_TLS_CA"] = str(self.ca)
        return env

    def settings(self, identity: Identity | None = None) -> ChassisSettings:
        """Chassis settings for a client of this bus (the admin's by default: the operator's tools)."""
        creds = self.creds(identity or ADMIN_IDENTITY)
        return ChassisSettings(nats_url=self.url, nats_creds=creds, nats_tls_ca=self.ca, kv_replicas=self.replicas)

    def to_state(self) -> dict[str, Any]:
        return {"url": self.url, "creds_dir": str(self.creds_dir) if self.creds_dir else None,
                "ca": str(self.ca) if self.ca else None, "replicas": self.replicas}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BusAccess | None:
        bus = state.get("bus")
        if not bus:
            return None
        return cls(bus["url"], Path(bus["creds_dir"]) if bus.get("creds_dir") else None,
                   Path(bus["ca"]) if bus.get("ca") else None, int(bus.get("replicas") or 1))
