"""Run the local stack's mail relay: aiosmtpd with STARTTLS required, messages
kept in a Maildir.

Started by ``deploy/local/infra.py`` in its own process group, like the other
parts. At start it makes a self-signed certificate for 127.0.0.1/localhost
(with ``cryptography``) in the data directory, which notify trusts through
``NOTIFY_SMTP_CA_FILE``; a client that does not issue STARTTLS is refused
(530), and AUTH (``--username``/``--password``, local-only values) is offered
only after it. Every accepted message is written to ``<data>/maildir/new``,
where the demo and the tests read it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import logging
import signal
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--data", required=True, help="certificate and maildir go here")
    parser.add_argument("--username", default="")
    parser.add_argument("--password", default="")
    return parser.parse_args(argv)


def make_certificate(data: Path, host: str) -> tuple[Path, Path]:
    """A fresh self-signed certificate (its own trust anchor) for `host` and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "second-opinion local SMTP")])
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = data / "smtp-cert.pem", data / "smtp-key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_file, key_file


class Authenticator:
    def __init__(self, username: str, password: str) -> None:
        self.username, self.password = username.encode(), password.encode()

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = (
            isinstance(data, LoginPassword)
            and data.login == self.username
            and data.password == self.password
        )
        return AuthResult(success=ok, handled=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # aiosmtpd logs every command line at INFO (AUTH included): warnings only.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = make_certificate(data, args.host)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    auth: dict[str, Any] = {}
    if args.username:
        auth = {"authenticator": Authenticator(args.username, args.password)}
    controller = Controller(
        Mailbox(data / "maildir"),
        hostname=args.host,
        port=args.port,
        tls_context=context,
        require_starttls=True,
        auth_require_tls=True,
        **auth,
    )
    controller.start()
    logging.info("SMTP on %s:%d (STARTTLS required), maildir %s", args.host, args.port, data)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
