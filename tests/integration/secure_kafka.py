"""A second, real Kafka broker with TLS and SASL listeners, for the Kafka security tests.

Started from the same jars as the local stack (``localstack.start_kafka_broker``) on free
ports in a temporary directory, with a PKI generated here by ``cryptography``:

- ``SASL_SSL`` listener: PLAIN (users inline in the listener's JAAS config) and
  SCRAM-SHA-256/512 (users created by ``kafka-storage format --add-scram``), TLS with a
  server certificate for 127.0.0.1 signed by a test CA;
- ``SSL`` listener requiring a client certificate (mutual TLS);
- ``CONTROLLER`` listener in plaintext (KRaft, loopback only);
- ACLs enforced (``StandardAuthorizer``, nothing allowed without an ACL): ``USERNAME`` and
  the mutual-TLS client are super users (administrators); ``SERVICE_USERNAME`` (SCRAM) is a
  service principal with only the ACLs a test grants it (:func:`create_acls`).

Nothing of it touches the shared stack (its ports, ``var/``, its broker).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devstack import localstack
from services.runtime.kafka_admin import cluster_metadata
from services.runtime.settings import RuntimeSettings

USERNAME = "intervention-svc"  # a super user: the administrator
SERVICE_USERNAME = "intervention-auth"  # a service principal: only the ACLs granted to it
CLIENT_CN = "intervention-client"  # the mutual-TLS client certificate's subject (super user)


@dataclass(frozen=True, kw_only=True)
class Pki:
    ca_file: Path  # the CA that signed the broker's certificate
    rogue_ca_file: Path  # a CA that signed nothing the broker has
    client_cert: Path  # client certificate (mutual TLS), signed by the CA
    client_key: Path
    keystore: Path  # the broker's PKCS#12 keystore
    keystore_password: str = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class SecureBroker:
    sasl_bootstrap: str  # SASL_SSL
    mtls_bootstrap: str  # SSL with a required client certificate
    password: str = field(repr=False)  # USERNAME's SASL password (PLAIN and SCRAM alike)
    service_password: str = field(repr=False)  # SERVICE_USERNAME's (SCRAM only)
    pki: Pki
    process: localstack.KafkaBrokerProcess

    def sasl_settings(self, *, mechanism: str = "SCRAM-SHA-512", password: str | None = None,
                      trust: Literal["ca", "rogue", "system"] = "ca",
                      settings: type[RuntimeSettings] = RuntimeSettings,
                      **extra: object) -> RuntimeSettings:
        """Settings for the SASL_SSL listener as the administrator; ``trust`` picks
        KAFKA_SSL_CAFILE; ``settings`` a service's settings class."""
        cafile = {"ca": self.pki.ca_file, "rogue": self.pki.rogue_ca_file, "system": None}
        values: dict[str, object] = {
            "kafka_bootstrap_servers": self.sasl_bootstrap,
            "kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": mechanism,
            "kafka_sasl_username": USERNAME,
            "kafka_sasl_password": self.password if password is None else password,
            "kafka_ssl_cafile": cafile[trust], **extra}
        return settings(**values)  # type: ignore[arg-type]

    def service_settings(self, settings: type[RuntimeSettings] = RuntimeSettings,
                         **extra: object) -> RuntimeSettings:
        """Settings for the SASL_SSL listener as ``SERVICE_USERNAME`` (SCRAM-SHA-512)."""
        return self.sasl_settings(settings=settings, password=self.service_password,
                                  **{"kafka_sasl_username": SERVICE_USERNAME, **extra})

    def mtls_settings(self, *, with_client_cert: bool = True) -> RuntimeSettings:
        return RuntimeSettings(
            kafka_bootstrap_servers=self.mtls_bootstrap, kafka_security_protocol="SSL",
            kafka_ssl_cafile=self.pki.ca_file,
            kafka_ssl_certfile=self.pki.client_cert if with_client_cert else None,
            kafka_ssl_keyfile=self.pki.client_key if with_client_cert else None,
        )


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _ca(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(common)).issuer_name(_name(common))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(common: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, *,
          server: bool) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder().subject_name(_name(common)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
        ]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("intervention test CA")
    _rogue_key, rogue_cert = _ca("some other CA")
    server_key, server_cert = _leaf("127.0.0.1", ca_key, ca_cert, server=True)
    client_key, client_cert = _leaf(CLIENT_CN, ca_key, ca_cert, server=False)
    password = secrets.token_hex(12)
    pki = Pki(
        ca_file=directory / "ca.pem", rogue_ca_file=directory / "rogue-ca.pem",
        client_cert=directory / "client.pem", client_key=directory / "client.key",
        keystore=directory / "broker.p12", keystore_password=password,
    )
    pki.ca_file.write_bytes(_pem(ca_cert))
    pki.rogue_ca_file.write_bytes(_pem(rogue_cert))
    pki.client_cert.write_bytes(_pem(client_cert))
    pki.client_key.write_bytes(client_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    pki.client_key.chmod(0o600)
    pki.keystore.write_bytes(pkcs12.serialize_key_and_certificates(
        b"broker", server_key, server_cert, [ca_cert],
        serialization.BestAvailableEncryption(password.encode())))
    return pki


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _properties(*, sasl: int, mtls: int, controller: int, pki: Pki, password: str) -> str:
    broker_password = secrets.token_hex(12)
    plain = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
             f'username="broker" password="{broker_password}" '
             f'user_broker="{broker_password}" user_{USERNAME}="{password}";')
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners=SASL_SSL://127.0.0.1:{sasl},SSL://127.0.0.1:{mtls},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=SASL_SSL://127.0.0.1:{sasl},SSL://127.0.0.1:{mtls}
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_ssl.plain.sasl.jaas.config={plain}
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}
listener.name.ssl.ssl.client.auth=required
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:ANONYMOUS;User:broker;User:{USERNAME};User:CN={CLIENT_CN}
ssl.keystore.type=PKCS12
ssl.keystore.location={pki.keystore}
ssl.keystore.password={pki.keystore_password}
ssl.key.password={pki.keystore_password}
ssl.truststore.type=PEM
ssl.truststore.location={pki.ca_file}
log.dirs=${{LOG_DIR}}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
num.partitions=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
"""


def _answers(settings: RuntimeSettings) -> bool:
    quiet = logging.getLogger("aiokafka")
    level = quiet.level  # cluster_metadata silences aiokafka for good; keep that to the probe
    try:
        return asyncio.run(cluster_metadata(settings.kafka_bootstrap_servers, timeout=3.0,
                                            settings=settings)) is not None
    except Exception:  # noqa: BLE001 - any failure means "not ready yet"
        return False
    finally:
        quiet.setLevel(level)


def start_secure_broker(directory: Path) -> SecureBroker:
    pki = make_pki(directory / "pki")
    password = f"pw-{secrets.token_urlsafe(18)}"
    service_password = f"pw-{secrets.token_urlsafe(18)}"
    sasl, mtls, controller = _free_ports(3)
    scram = [arg for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512") for arg in
             ("--add-scram", f"{mechanism}=[name={USERNAME},password={password}]")]
    scram += ["--add-scram",
              f"SCRAM-SHA-512=[name={SERVICE_USERNAME},password={service_password}]"]
    placeholder = SecureBroker(sasl_bootstrap=f"127.0.0.1:{sasl}",
                               mtls_bootstrap=f"127.0.0.1:{mtls}", password=password,
                               service_password=service_password, pki=pki,
                               process=None)  # type: ignore[arg-type]
    probe = placeholder.sasl_settings()
    process = localstack.start_kafka_broker(
        _properties(sasl=sasl, mtls=mtls, controller=controller, pki=pki, password=password),
        directory / "kafka", format_args=tuple(scram), ready=lambda: _answers(probe),
        ready_timeout=120.0,
    )
    return SecureBroker(sasl_bootstrap=placeholder.sasl_bootstrap,
                        mtls_bootstrap=placeholder.mtls_bootstrap, password=password,
                        service_password=service_password, pki=pki, process=process)


# Kafka's ACL protocol codes (org.apache.kafka.common.resource / acl).
TOPIC, GROUP = 2, 3
LITERAL, PREFIXED = 3, 4
READ, WRITE = 3, 4
ALLOW = 3


@dataclass(frozen=True, kw_only=True)
class Acl:
    resource_type: int  # TOPIC or GROUP
    name: str
    operation: int  # READ or WRITE (each implies DESCRIBE)
    pattern: int = LITERAL


async def create_acls(admin: RuntimeSettings, principal: str, acls: list[Acl]) -> None:
    """Grant ``acls`` (ALLOW, any host) to ``principal`` (``User:<name>``), as ``admin``.

    aiokafka's admin client has no ``create_acls``: this sends Kafka's CreateAcls request
    (one per ACL, as aiokafka's request class builds them) through it.
    """
    from services.runtime.kafka_security import kafka_security_options

    client = AIOKafkaAdminClient(bootstrap_servers=admin.kafka_bootstrap_servers,
                                 **kafka_security_options(admin))
    await client.start()
    try:
        for acl in acls:
            response = await client._send_request(CreateAclsRequest(
                acl.resource_type, acl.name, acl.pattern, principal, "*", acl.operation,
                ALLOW))
            errors = [r for r in response.to_object()["creation_responses"]
                      if r["error_code"] != 0]
            if errors:
                raise RuntimeError(f"creating ACL {acl} failed: {errors}")
    finally:
        await client.close()
