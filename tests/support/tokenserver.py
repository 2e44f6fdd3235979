"""A token server like Docker Hub's ``auth.docker.io``, for a token-auth upstream.

``GET /token?service=S&scope=repository:NAME:pull`` answers ``{"token", "access_token",
"expires_in", "issued_at"}`` with an RS256 JWT whose ``x5c`` header carries the
self-signed certificate the registry trusts (its ``rootcertbundle``). Anonymous clients
get ``pull`` (nothing, for a private registry); clients with valid Basic credentials
get what they ask for. Every request is recorded so tests can count them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import http.server
import json
import re
import threading
import time
import typing as t
import urllib.parse
import uuid
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from .httpserver import BackgroundServer

if t.TYPE_CHECKING:
    from .registry import Registry

_SCOPE = re.compile(r"^(?P<type>[a-z]+):(?P<name>[^:]+):(?P<actions>[a-z*,]+)$")


@dataclasses.dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered."""

    service: str
    scopes: tuple[str, ...]
    username: str | None
    status: int

    @property
    def repositories(self) -> tuple[str, ...]:
        names = []
        for scope in self.scopes:
            match = _SCOPE.match(scope)
            if match and match["type"] == "repository":
                names.append(match["name"])
        return tuple(names)


def _self_signed(directory: Path) -> tuple[rsa.RSAPrivateKey, x509.Certificate, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-token-issuer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    bundle = directory / "bundle.crt"
    bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, bundle


class TokenServer:
    """A threaded token server on 127.0.0.1.

    :param directory: the certificate bundle for the registry is written here.
    :param users: username to password; Basic credentials are checked against it.
    :param issuer: the ``iss`` claim; must match the registry's ``auth.token.issuer``.
    :param expires_in: token lifetime in seconds.
    :param anonymous_pull: anonymous clients may pull (Docker Hub's public images);
        ``False`` makes the registry private, readable with credentials only.
    """

    def __init__(
        self,
        directory: Path,
        *,
        users: t.Mapping[str, str] | None = None,
        issuer: str = "auth.docker.io",
        expires_in: int = 300,
        anonymous_pull: bool = True,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.users = dict(users or {})
        self.anonymous_pull = anonymous_pull
        self.issuer = issuer
        self.expires_in = expires_in
        self._key, cert, self.bundle_path = _self_signed(directory)
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self._private_pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._http = BackgroundServer("token server")

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def start(self) -> TokenServer:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                status, body = owner._answer(self.path, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="token"')
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: t.Any) -> None:
                pass

        self._http.start(Handler)
        return self

    def stop(self) -> None:
        self._http.stop()

    # -- requests ----------------------------------------------------------------------

    @property
    def requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._requests)

    def count(self, repository: str | None = None, *, since: int = 0) -> int:
        """Token requests answered with 200, optionally only those naming ``repository``."""
        return len(
            [
                r
                for r in self.requests[since:]
                if r.status == 200 and (repository is None or repository in r.repositories)
            ]
        )

    def mark(self) -> int:
        return len(self.requests)

    def _answer(self, target: str, authorization: str | None) -> tuple[int, dict[str, t.Any]]:
        url = urllib.parse.urlsplit(target)
        query = urllib.parse.parse_qs(url.query)
        service = (query.get("service") or [""])[0]
        scopes = tuple(
            scope for value in query.get("scope", []) for scope in value.split(" ") if scope
        )
        username, status, body = self._issue(url.path, service, scopes, authorization)
        with self._lock:
            self._requests.append(TokenRequest(service, scopes, username, status))
        return status, body

    def _issue(
        self,
        path: str,
        service: str,
        scopes: tuple[str, ...],
        authorization: str | None,
    ) -> tuple[str | None, int, dict[str, t.Any]]:
        if path != "/token":
            return None, 404, {"details": "not found"}
        username: str | None = None
        if authorization:
            scheme, _, credentials = authorization.partition(" ")
            try:
                decoded = base64.b64decode(credentials, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            user, sep, password = decoded.partition(":")
            if scheme.lower() != "basic" or not sep or self.users.get(user) != password:
                return user or None, 401, {"details": "incorrect username or password"}
            username = user
        access = []
        for scope in scopes:
            match = _SCOPE.match(scope)
            if match is None:
                return username, 400, {"details": f"invalid scope {scope!r}"}
            asked = match["actions"].split(",")
            # Docker Hub: anonymous clients may pull public images, nothing more.
            anonymous = [a for a in asked if a == "pull"] if self.anonymous_pull else []
            granted = asked if username else anonymous
            access.append({"type": match["type"], "name": match["name"], "actions": granted})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": service,
            "sub": username or "",
            "iat": now,
            "nbf": now - 10,
            "exp": now + self.expires_in,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = jwt.encode(
            claims, self._private_pem, algorithm="RS256", headers={"x5c": [self._x5c]}
        )
        issued_at = datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat()
        return (
            username,
            200,
            {
                "token": token,
                "access_token": token,
                "expires_in": self.expires_in,
                "issued_at": issued_at.replace("+00:00", "Z"),
            },
        )


class TokenUpstream(t.NamedTuple):
    registry: Registry
    token_server: TokenServer
    #: Credentials that may push (anonymous clients may only pull).
    push_creds: tuple[str, str]
