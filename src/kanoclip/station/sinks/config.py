"""The sinks' flags, shared by `watch` and `serve` (declared here once)."""

from __future__ import annotations

from dataclasses import dataclass

from kanoclip.options import option

SINKS = "sinks"
# --opcua-security: none, or a policy of asyncua that signs (and encrypts) with the server's certificate
OPCUA_POLICIES = (
    "Basic256Sha256_Sign",
    "Basic256Sha256_SignAndEncrypt",
    "Aes128Sha256RsaOaep_Sign",
    "Aes128Sha256RsaOaep_SignAndEncrypt",
    "Aes256Sha256RsaPss_Sign",
    "Aes256Sha256RsaPss_SignAndEncrypt",
)
OPCUA_SECURITY = ("none", *OPCUA_POLICIES)


@dataclass(frozen=True)
class SinkConfig:
    """Where each result goes besides the history."""

    webhook: str | None = option(
        None, metavar="URL", group=SINKS, help="POST each result as JSON here (retried; never blocks scoring)"
    )
    webhook_on: str = option(
        "all", choices=("all", "defect", "ng"), group=SINKS, help="every result, or defects only (ng: the old name)"
    )
    opcua: str | None = option(
        None,
        metavar="URL",
        group=SINKS,
        help="host an OPC UA server at opc.tcp://HOST:PORT: per profile LastScore, LastLabel, ..., Count (read by a "
        "PLC or SCADA)",
    )
    opcua_user: str | None = option(
        None, metavar="NAME", group=SINKS, help="OPC UA clients must log in as NAME (anonymous ones are refused)"
    )
    opcua_password: str | None = option(
        None,
        secret=True,
        metavar="PASSWORD",
        group=SINKS,
        help="the OPC UA user's password: visible to every user in `ps`; prefer env KANOCLIP_OPCUA_PASSWORD",
    )
    opcua_security: str = option(
        "none",
        choices=OPCUA_SECURITY,
        group=SINKS,
        help="OPC UA security policy (none: neither signed nor encrypted); the others need --opcua-cert, --opcua-key",
    )
    opcua_cert: str | None = option(
        None, metavar="FILE", group=SINKS, help="the OPC UA server's certificate (PEM or DER) for --opcua-security"
    )
    opcua_key: str | None = option(
        None, metavar="FILE", group=SINKS, help="the private key of --opcua-cert (PEM or DER, not encrypted)"
    )
    mqtt: str | None = option(
        None,
        metavar="URL",
        group=SINKS,
        help="publish each result to mqtt://[user:pass@]host[:port]/topic (or mqtts://) at TOPIC/PROFILE, QoS 1, "
        "retained; kept in the state while the broker is down; a user given without a password takes it from env "
        "KANOCLIP_MQTT_PASSWORD",
    )
    mqtt_queue: int = option(
        10_000, metavar="N", group=SINKS, help="results kept for the MQTT broker at most; past it the oldest is dropped"
    )
