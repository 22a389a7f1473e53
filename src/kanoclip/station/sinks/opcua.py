"""An OPC UA server that a PLC or a SCADA reads: one object per profile, its variables updated per result.

`--opcua opc.tcp://HOST:PORT` makes kanoclip host the server (OPC UA clients poll or subscribe; nothing is pushed
anywhere). The address space, in the namespace `urn:kanoclip` (its index: look it up by URI, it is 2 today):

    Objects/Kanoclip/<profile>/LastScore    Double    the last result's score (NaN: an error, no score)
                              /LastLabel    Int32     0 good, 1 defect, -1 none (no threshold yet, or an error)
                              /LastPath     String    the scored file (or `video#frame=N`)
                              /LastTime     DateTime  when the result was made (UTC)
                              /Threshold    Double    the threshold it was judged by (NaN: none, or not known)
                              /DefectCount  UInt64    results labelled defect since the server started
                              /Count        UInt64    results since the server started (errors included)

Node ids are strings, `ns=<index>;s=Kanoclip/<profile>/<Variable>`, so a client can be configured without browsing.
A profile's object appears with its first result; Count is written last, so a client that sees Count change reads
the other variables of that result.

The server runs on its own thread and event loop. `send` only hands a message to that loop (a bounded number may
wait): a slow client or a full queue never slows scoring, and what was not published is reported to `on_failure`
(an event in the history; the result itself is recorded before it is sent). `close` publishes what waits, then stops
the server, so the port is free when the watcher or serve has stopped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import hmac
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kanoclip.errors import ConfigError
from kanoclip.labels import Label
from kanoclip.station.sinks.config import OPCUA_POLICIES, OPCUA_SECURITY

if TYPE_CHECKING:
    from collections.abc import Callable

    from asyncua import Node, Server

log = logging.getLogger("kanoclip.opcua")

NAMESPACE = "urn:kanoclip"
APPLICATION_URI = "urn:kanoclip:server"  # unless the certificate names another (its subjectAltName URI)
ROOT = "Kanoclip"
DEFAULT_PORT = 4840
PASSWORD_ENV = "KANOCLIP_OPCUA_PASSWORD"
INSTALL = "OPC UA needs asyncua: pip install 'kanoclip[opcua]'"
# the variables in the order they are written (Count last); their OPC UA types are in `_values`
VARIABLES = ("LastScore", "LastLabel", "LastPath", "LastTime", "Threshold", "DefectCount", "Count")


@dataclass(frozen=True)
class Endpoint:
    url: str
    host: str
    port: int


def endpoint(url: str) -> Endpoint:
    """`opc.tcp://HOST[:PORT][/path]` checked (the port defaults to OPC UA's 4840)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme != "opc.tcp" or not parts.hostname or port == -1 or parts.query or parts.fragment:
        raise ConfigError(f"--opcua takes opc.tcp://HOST:PORT (for example opc.tcp://127.0.0.1:4840), got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"--opcua: give the user with --opcua-user and the password in env {PASSWORD_ENV}, not in the URL"
        )
    return Endpoint(url, parts.hostname, DEFAULT_PORT if port is None else port)


@dataclass
class _Profile:
    nodes: dict[str, Node]
    count: int = 0
    defects: int = 0


@dataclass
class _Users:
    """asyncua's user manager: the one user and password given, compared in constant time; no one else."""

    user: str
    password: str = field(repr=False)

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> Any:
        from asyncua.crypto.permission_rules import User, UserRole

        given_user, given_password = (username or "").encode(), (password or "").encode()
        right = hmac.compare_digest(given_user, self.user.encode())
        right &= hmac.compare_digest(given_password, self.password.encode())
        return User(role=UserRole.User, name=self.user) if right else None


class OpcUa:
    """The `--opcua` sink: an asyncua server on its own thread, the variables of each profile updated per message."""

    def __init__(
        self,
        url: str,
        on_failure: Callable[[dict[str, Any], str], None],
        user: str | None = None,
        password: str | None = None,
        security: str = "none",
        cert: str | Path | None = None,
        key: str | Path | None = None,
        queue_size: int = 1000,
        start_timeout_s: float = 60.0,
    ) -> None:
        self.endpoint = endpoint(url)
        password = password if password is not None else os.environ.get(PASSWORD_ENV) or None
        if user and not password:
            raise ConfigError(f"--opcua-user {user} needs a password: env {PASSWORD_ENV} (or --opcua-password)")
        if password and not user:
            raise ConfigError("an OPC UA password without --opcua-user: give the user too (or drop the password)")
        if security not in OPCUA_SECURITY:
            raise ConfigError(f"--opcua-security is one of {', '.join(OPCUA_SECURITY)}; got {security!r}")
        if security == "none" and (cert or key):
            raise ConfigError(
                "--opcua-cert and --opcua-key are the server's certificate for a --opcua-security policy "
                f"({', '.join(OPCUA_POLICIES)}): give one, or drop them"
            )
        if security != "none":
            for flag, path in (("--opcua-cert", cert), ("--opcua-key", key)):
                if not path:
                    raise ConfigError(f"--opcua-security {security} needs the server's certificate: {flag} FILE")
                if not Path(path).is_file():
                    raise ConfigError(f"{flag} {path}: no such file")
        try:
            import asyncua  # noqa: F401
        except ImportError as e:
            raise ConfigError(INSTALL) from e
        if logging.getLogger("asyncua").level == logging.NOTSET:
            logging.getLogger("asyncua").setLevel(logging.WARNING)  # INFO logs every session and request
        if user and security == "none":
            log.warning("--opcua-user with --opcua-security none: the password crosses the network unencrypted")
        self.on_failure, self.queue_size = on_failure, queue_size
        self.user, self.password, self.security = user, password, security
        self.cert, self.key = (Path(cert) if cert else None), (Path(key) if key else None)
        self.published = self.failed = 0
        self.profiles: dict[str, _Profile] = {}
        self.namespace = 0  # its index, once the server has started
        self.lock = threading.Lock()
        self.waiting = 0  # handed to the loop, not yet published
        self.stopped = False
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.inbox: asyncio.Queue[dict[str, Any] | None] | None = None
        self.publisher: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self._run, name="kanoclip-opcua", daemon=True)
        self.thread.start()
        if not self.ready.wait(start_timeout_s):
            self.close(0)
            raise ConfigError(f"--opcua {url}: the OPC UA server did not start within {start_timeout_s:g} s")
        if self.error is not None:
            self.thread.join(timeout=10)
            raise self.error

    # -- any thread --------------------------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        """Hand a message to the server's loop (never blocks); a full queue or a stopped server is a failure."""
        with self.lock:
            if self.stopped or self.loop is None or self.inbox is None:
                why = f"not published: the OPC UA server {self.endpoint.url} has stopped"
            elif self.waiting >= self.queue_size:
                why = f"not published: {self.queue_size} results were already waiting for {self.endpoint.url}"
            else:
                self.waiting += 1
                self.loop.call_soon_threadsafe(self.inbox.put_nowait, message)
                return
        self.failed += 1
        self._report(message, why)

    def close(self, wait_s: float = 10.0) -> None:
        """Publish what waits (for at most `wait_s`), then stop the server: its port is free when this returns."""
        with self.lock:
            if not self.stopped and self.loop is not None and self.inbox is not None:
                self.loop.call_soon_threadsafe(self.inbox.put_nowait, None)
            self.stopped = True
        self.thread.join(timeout=wait_s)
        if self.thread.is_alive() and self.loop is not None and self.publisher is not None:
            self.loop.call_soon_threadsafe(self.publisher.cancel)  # what still waits is dropped: stop now
            self.thread.join(timeout=10)

    def _report(self, message: dict[str, Any], why: str) -> None:
        try:
            self.on_failure(message, why)
        except Exception as e:  # the history is unreachable: say so here, and go on publishing
            log.warning("could not record an unpublished OPC UA result (%s): %s", why, e)

    # -- the server's thread -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(loop))
        finally:
            loop.close()

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            server = await self._start()
        except Exception as e:
            self.error = e if isinstance(e, ConfigError) else ConfigError(f"--opcua {self.endpoint.url}: {e}")
            self.ready.set()
            return
        with self.lock:
            closed = self.stopped  # closed while it started (it took too long): stop at once
            if not closed:
                self.inbox, self.loop = asyncio.Queue(), loop
                self.publisher = publisher = loop.create_task(self._publish(server))
        if closed:
            await server.stop()
            return
        self.ready.set()
        try:
            await publisher
        except asyncio.CancelledError:
            pass
        finally:
            await server.stop()

    async def _start(self) -> Server:
        from asyncua import Server, ua

        users: Any = _Users(self.user, self.password or "") if self.user else None  # asyncua's UserManager
        server = Server(user_manager=users)
        await server.init()
        server.set_endpoint(self.endpoint.url)
        server.set_server_name("kanoclip")
        uri = APPLICATION_URI
        if self.security != "none":
            assert self.cert is not None and self.key is not None
            try:  # PEM or DER by content, whatever the file is called (.crt, .key, ...)
                await server.load_certificate(*_pem_or_der(self.cert))
            except Exception as e:
                raise ConfigError(f"--opcua-cert {self.cert}: not a PEM or DER certificate ({e})") from e
            try:
                content, form = _pem_or_der(self.key)
                await server.load_private_key(content, format=form)
            except Exception as e:
                raise ConfigError(f"--opcua-key {self.key}: not an unencrypted PEM or DER private key ({e})") from e
            uri = _certificate_uri(server.iserver.certificate) or uri
        await server.set_application_uri(uri)
        policy = "NoSecurity" if self.security == "none" else self.security
        server.set_security_policy([getattr(ua.SecurityPolicyType, policy)])
        server.set_identity_tokens([ua.UserNameIdentityToken] if self.user else [ua.AnonymousIdentityToken])
        self.namespace = await server.register_namespace(NAMESPACE)
        await server.nodes.objects.add_object(_node_id(self.namespace, ROOT), ua.QualifiedName(ROOT, self.namespace))
        try:
            await server.start()
        except OSError as e:
            where = f"{self.endpoint.host}:{self.endpoint.port}"
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"--opcua {self.endpoint.url}: port {self.endpoint.port} is already in use on "
                    f"{self.endpoint.host} (another kanoclip or OPC UA server?): choose another port"
                ) from e
            raise ConfigError(f"--opcua {self.endpoint.url}: cannot listen on {where}: {e.strerror or e}") from e
        return server

    async def _publish(self, server: Server) -> None:
        assert self.inbox is not None
        while (message := await self.inbox.get()) is not None:
            try:
                await self._apply(server, message)
                self.published += 1
            except Exception as e:
                self.failed += 1
                self._report(message, f"not published on OPC UA {self.endpoint.url}: {type(e).__name__}: {e}")
            finally:
                with self.lock:
                    self.waiting -= 1

    async def _apply(self, server: Server, message: dict[str, Any]) -> None:
        from asyncua import ua

        name = str(message.get("profile"))
        profile = self.profiles.get(name) or await self._add_profile(server, name, message)
        profile.count += 1
        profile.defects += int(message.get("label") == Label.DEFECT)
        now = dt.datetime.now(dt.timezone.utc)
        made = _time(message.get("time")) or now
        for variable, value in _values(message, profile, made).items():
            stamps: dict[str, Any] = {"SourceTimestamp": made, "ServerTimestamp": now}
            await profile.nodes[variable].write_value(ua.DataValue(value, **stamps))

    async def _add_profile(self, server: Server, name: str, message: dict[str, Any]) -> _Profile:
        """The profile's object under Objects/Kanoclip, with its variables (read-only to clients)."""
        from asyncua import ua

        ns = self.namespace
        root = server.get_node(_node_id(ns, ROOT))
        obj = await root.add_object(_node_id(ns, f"{ROOT}/{name}"), ua.QualifiedName(name, ns))
        profile = _Profile({})
        for variable, value in _values(message, profile, dt.datetime.now(dt.timezone.utc)).items():
            node_id = _node_id(ns, f"{ROOT}/{name}/{variable}")
            profile.nodes[variable] = await obj.add_variable(
                node_id, ua.QualifiedName(variable, ns), value.Value, varianttype=value.VariantType
            )
        self.profiles[name] = profile
        return profile


def _values(message: dict[str, Any], profile: _Profile, made: dt.datetime) -> dict[str, Any]:
    """Each variable's value as an OPC UA Variant, in `VARIABLES` order."""
    from asyncua import ua

    score, label, threshold = message.get("score"), message.get("label"), message.get("threshold")
    values = {
        "LastScore": ua.Variant(math.nan if score is None else float(score), ua.VariantType.Double),
        "LastLabel": ua.Variant(-1 if label is None else int(label), ua.VariantType.Int32),
        "LastPath": ua.Variant(str(message.get("source") or ""), ua.VariantType.String),
        "LastTime": ua.Variant(made, ua.VariantType.DateTime),
        "Threshold": ua.Variant(math.nan if threshold is None else float(threshold), ua.VariantType.Double),
        "DefectCount": ua.Variant(profile.defects, ua.VariantType.UInt64),
        "Count": ua.Variant(profile.count, ua.VariantType.UInt64),
    }
    return {v: values[v] for v in VARIABLES}


def _node_id(namespace: int, path: str) -> Any:
    """A string node id (`ns=2;s=Kanoclip/bottle/Count`): stable, so a client can be configured without browsing."""
    from asyncua import ua

    return ua.NodeId.from_string(f"ns={namespace};s={path}")


def _time(text: Any) -> dt.datetime | None:
    """A message's `time` (ISO 8601, `Z`) as an aware datetime; None when missing or unreadable."""
    if not isinstance(text, str):
        return None
    try:
        made = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return made if made.tzinfo is not None else made.replace(tzinfo=dt.timezone.utc)


def _pem_or_der(path: Path) -> tuple[bytes, str]:
    content = path.read_bytes()
    return content, "pem" if b"-----BEGIN" in content else "der"


def _certificate_uri(certificate: Any) -> str | None:
    """The application URI a certificate names (its subjectAltName URI), which clients match against the server's."""
    from cryptography import x509

    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (x509.ExtensionNotFound, AttributeError):
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return str(uris[0]) if uris else None
