"""
Certificates for a small cluster: a private CA, node and client certificates.

C{python -m asynqueue.certs DIR --node node1 --node localhost --client app}
(or the C{asynqueue-certs} command) writes C{ca.crt} and C{ca.key}, a
C{NAME.crt}/C{NAME.key} pair per node (for the node's C{ssl:} listen
string) and a C{NAME.pem} per client (certificate and key, for
L{RemoteWorker}'s C{certificate=}). Keep C{ca.key} and the keys private.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["checkPEM", "makeCluster", "main"]

_PEM = serialization.Encoding.PEM


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _keyPEM(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "asynqueue cluster"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _altNames(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    if host == "localhost":
        names += [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    return names


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def makeCluster(
    directory: str | os.PathLike[str],
    nodes: Sequence[str] = ("localhost",),
    clients: Sequence[str] = ("client",),
    days: int = 825,
) -> Path:
    """
    Write a CA and certificates for C{nodes} (host names or addresses) and
    C{clients} into C{directory}; return the directory.

    An existing C{ca.crt}/C{ca.key} there is reused, so nodes and clients
    can be added later.
    """
    where = Path(directory)
    where.mkdir(parents=True, exist_ok=True)
    caCert, caKeyPath = where / "ca.crt", where / "ca.key"
    if caCert.exists() and caKeyPath.exists():
        ca = x509.load_pem_x509_certificate(caCert.read_bytes())
        loaded = serialization.load_pem_private_key(caKeyPath.read_bytes(), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        caKey = loaded
    else:
        caKey = _key()
        caName = _name("asynqueue cluster CA")
        ca = (
            _builder(caName, caName, caKey, days * 2)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(caKey, hashes.SHA256())
        )
        _write(caCert, ca.public_bytes(_PEM))
        _write(caKeyPath, _keyPEM(caKey), private=True)
    for node in nodes:
        key = _key()
        cert = (
            _builder(_name(node), ca.subject, key, days)
            .add_extension(x509.SubjectAlternativeName(_altNames(node)), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(caKey, hashes.SHA256())
        )
        _write(where / f"{node}.crt", cert.public_bytes(_PEM))
        _write(where / f"{node}.key", _keyPEM(key), private=True)
    for client in clients:
        key = _key()
        cert = (
            _builder(_name(client), ca.subject, key, days)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
            .sign(caKey, hashes.SHA256())
        )
        _write(
            where / f"{client}.pem",
            cert.public_bytes(_PEM) + _keyPEM(key),
            private=True,
        )
    return where


_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")


def checkPEM(path: str, what: str, withKey: bool = False) -> None:
    """
    Check that the PEM file at C{path} (C{what} it is, for the message)
    holds a certificate and, C{withKey}, its private key too.

    @raise OSError: The file cannot be read.
    @raise ValueError: It lacks either, in one line.
    """
    with open(path, "rb") as f:
        data = f.read()
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError(f"{what} {path} holds no certificate (PEM)")
    if withKey and _PRIVATE_KEY.search(data) is None:
        raise ValueError(
            f"{what} {path} has no private key: give a PEM file with the "
            "certificate and its key (asynqueue-certs writes one per client, "
            "CLIENT.pem)"
        )


def main(argv: Sequence[str] | None = None) -> None:
    """The C{asynqueue-certs} command."""
    parser = argparse.ArgumentParser(
        prog="asynqueue-certs",
        description="Make a CA and certificates for asynqueue nodes and clients.",
    )
    parser.add_argument("directory", help="where to write the files")
    parser.add_argument(
        "--node",
        action="append",
        default=[],
        help="a node's host name or address (repeat)",
    )
    parser.add_argument(
        "--client", action="append", default=[], help="a client's name (repeat)"
    )
    parser.add_argument(
        "--days", type=int, default=825, help="how long the certificates last"
    )
    args = parser.parse_args(argv)
    where = makeCluster(
        args.directory, args.node or ["localhost"], args.client or ["client"], args.days
    )
    for path in sorted(where.iterdir()):
        print(path)


if __name__ == "__main__":
    main()
