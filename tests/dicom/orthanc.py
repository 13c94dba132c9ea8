"""A real Orthanc (with the DICOMweb plugin) for tests: a stand-in for a hospital PACS.

    with running_orthanc(tmp_path, modalities={"gw": ("YILIAN", "127.0.0.1", port)}) as pacs:
        dcmtk("storescu", "-aec", pacs.aet, "127.0.0.1", str(pacs.dicom_port), path)
        assert uid in pacs.instances()
        pacs.post("/modalities/gw/store", study_id)           # Orthanc as C-STORE SCU
        pacs.get("/dicom-web/studies")                        # QIDO-RS

Each Orthanc gets its own folder under ``tmp_path`` (config, SQLite index, storage, log), fresh
ports and ``TCP_NODELAY=1``. Its REST API has no authentication; Orthanc 1.10 has no bind-address
setting, so its HTTP and DICOM ports listen on all interfaces. Any calling AE title may C-ECHO,
C-STORE, C-FIND, C-GET and C-MOVE; C-MOVE destinations must be listed in ``modalities``.

Orthanc as a client of other peers (REST, all POST with a JSON body):
    /modalities/{name}/echo {}                       C-ECHO
    /modalities/{name}/store "<orthanc id>"          C-STORE a patient/study/series/instance
    /modalities/{name}/query {"Level": "Study", "Query": {"PatientID": "*"}}
        -> {"ID": q}; GET /queries/{q}/answers?expand&simplify;
        POST /queries/{q}/answers/0/retrieve {"TargetAet": <own AET>, "Synchronous": true}
        (C-MOVE; the remote SCP must know Orthanc's AET, host and port)
    /modalities/{name}/move {"Level": "Study", "Resources": [{"StudyInstanceUID": u}],
        "TargetAet": ..., "Synchronous": true}
    /dicom-web/servers/{name}/qido {"Uri": "/studies", "Arguments": {"PatientID": "..."}}
    /dicom-web/servers/{name}/get {"Uri": "/studies/<uid>/metadata"}
    /dicom-web/servers/{name}/retrieve {"Resources": [{"Study": u}], "Synchronous": true}
    /dicom-web/servers/{name}/stow {"Resources": ["<orthanc id>"], "Synchronous": true}
Orthanc 1.10.1 has no C-GET SCU route (POST /modalities/{name}/get is a 404); its C-GET SCP
works. The plugin's /qido answers in Orthanc's verbose JSON ({"Group", "Element", "Name",
"Value", "vr"}), not DICOM JSON; /get passes the remote answer through.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
HOST = "127.0.0.1"
INSTALL = "apt-get install orthanc orthanc-dicomweb"
START_TIMEOUT = 60.0


class OrthancError(AssertionError):
    """A REST call that Orthanc refused, or an Orthanc that would not start."""


def free_port() -> int:
    """A TCP port free on all interfaces (Orthanc cannot bind to loopback only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _modality(value: Sequence[Any] | Mapping[str, Any]) -> Any:
    if isinstance(value, Mapping):  # Orthanc's long form: {"AET", "Host", "Port", "Allow*"...}
        return dict(value)
    aet, host, port, *rest = value
    return [str(aet), str(host), int(port), *rest]


def _dicomweb_server(value: str | Sequence[Any] | Mapping[str, Any]) -> Any:
    # The plugin (1.7) rejects a bare URL string ("Bad file format", logged after start, and
    # the server is silently missing): it wants [URL, user, password] or {"Url": ...}.
    if isinstance(value, str):
        return [value]
    return dict(value) if isinstance(value, Mapping) else list(value)


@dataclass(frozen=True)
class DicomTls:
    """Orthanc's DICOM TLS: its certificate and key, and the CA certificates its callers'
    certificates must be signed by. It then refuses plain connections, anonymous TLS and (with
    ``client_certificate_required``) callers without a certificate from that CA."""

    certificate: Path
    private_key: Path
    trusted: Path
    client_certificate_required: bool = True

    def config(self) -> dict[str, Any]:
        return {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(self.certificate),
            "DicomTlsPrivateKey": str(self.private_key),
            "DicomTlsTrustedCertificates": str(self.trusted),
            "DicomTlsRemoteCertificateRequired": self.client_certificate_required,
        }


class Orthanc:
    """A running Orthanc in its own folder; see ``running_orthanc``."""

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        modalities: Mapping[str, Sequence[Any] | Mapping[str, Any]] | None = None,
        dicomweb_servers: Mapping[str, Any] | None = None,
        dicom_tls: DicomTls | None = None,
    ) -> None:
        assert ORTHANC.exists(), f"Orthanc is not installed at {ORTHANC} ({INSTALL})"
        assert DICOMWEB_PLUGIN.exists(), (
            f"Orthanc's DICOMweb plugin is not installed at {DICOMWEB_PLUGIN} ({INSTALL})"
        )
        self.workdir = workdir
        self.aet = aet
        self.modalities = {name: _modality(v) for name, v in (modalities or {}).items()}
        self.dicomweb_servers = {
            name: _dicomweb_server(v) for name, v in (dicomweb_servers or {}).items()
        }
        self.dicom_tls = dicom_tls
        self.config_path = workdir / "orthanc.json"
        self.log_path = workdir / "orthanc.log"
        self.dicom_port = 0
        self.http_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.version = "?"

    # -- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return self.url + "/dicom-web"

    def config(self) -> dict[str, Any]:
        db = self.workdir / "db"
        config: dict[str, Any] = {
            "Name": f"test-{self.aet}",
            "StorageDirectory": str(db),
            "IndexDirectory": str(db),
            "TemporaryDirectory": str(self.workdir / "tmp"),
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpDescribeErrors": True,
            "OrthancExplorerEnabled": False,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowFindWorklist": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "UnknownSopClassAccepted": True,
            "DicomModalitiesInDatabase": False,
            "DicomModalities": self.modalities,
            "OrthancPeersInDatabase": False,
            "DefaultEncoding": "Utf8",
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "Host": f"{HOST}:{self.http_port}",
                "Ssl": False,
                "Servers": self.dicomweb_servers,
            },
        }
        if self.dicom_tls is not None:
            config.update(self.dicom_tls.config())
        return config

    # -- life cycle --------------------------------------------------------------------------

    def start(self, attempts: int = 3) -> None:
        for attempt in range(attempts):
            self.http_port, self.dicom_port = free_port(), free_port()
            while self.dicom_port == self.http_port:
                self.dicom_port = free_port()
            (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(json.dumps(self.config(), indent=2))
            try:
                self._launch()
                return
            except OrthancError:
                self.stop()
                lost_port_race = "already in use" in self.log_tail().lower()
                if not lost_port_race or attempt == attempts - 1:
                    raise

    def _launch(self) -> None:
        with self.log_path.open("wb") as log:  # one log per attempt
            self.process = subprocess.Popen(
                [str(ORTHANC), str(self.config_path)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TCP_NODELAY": "1", "TMPDIR": str(self.workdir / "tmp")},
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with status {self.process.returncode} on start; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                self.version = str(self.get("/system", timeout=2)["Version"])
                break
            except (OSError, ValueError, KeyError, OrthancError):
                if time.monotonic() > deadline:
                    raise OrthancError(
                        f"Orthanc's REST API on {self.url} did not answer within "
                        f"{START_TIMEOUT:.0f} s; log {self.log_path}:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.1)
        plugins = self.get("/plugins")
        if "dicom-web" not in plugins:
            raise OrthancError(f"the DICOMweb plugin did not load ({plugins}):\n{self.log_tail()}")
        # The plugin reads its "Servers" once Orthanc has started, maybe after /system answers.
        servers, until = self.get("/dicom-web/servers"), time.monotonic() + 10
        while set(self.dicomweb_servers) - set(servers) and time.monotonic() < until:
            time.sleep(0.1)
            servers = self.get("/dicom-web/servers")
        if set(self.dicomweb_servers) - set(servers):
            raise OrthancError(
                f"the DICOMweb plugin knows servers {servers}, not all of "
                f"{sorted(self.dicomweb_servers)}:\n{self.log_tail()}"
            )
        modalities = self.get("/modalities")
        if set(self.modalities) - set(modalities):
            raise OrthancError(
                f"Orthanc knows modalities {modalities}, not all of "
                f"{sorted(self.modalities)}:\n{self.log_tail()}"
            )

    def stop(self, graceful: bool = False) -> None:
        """Kill Orthanc and wait for it. ``graceful``: SIGTERM first, which takes Orthanc 1.10
        about 3.5 s (its HTTP and DICOM servers wind down), instead of SIGKILL's instant."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        if graceful:
            process.terminate()
            try:
                process.wait(timeout=30)
                return
            except subprocess.TimeoutExpired:
                pass
        process.kill()
        process.wait(timeout=30)

    def __enter__(self) -> Orthanc:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_modality(self, name: str, aet: str, host: str, port: int, **options: Any) -> None:
        """Register a DICOM peer at run time (e.g. one started after this Orthanc)."""
        self.put(f"/modalities/{name}", {"AET": aet, "Host": host, "Port": port, **options})

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- REST --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> Any:
        """One REST call; JSON answers are decoded, others returned as bytes.

        ``body``: bytes and str are sent as they are (Orthanc takes a bare ID for
        ``/modalities/{name}/store``), anything else as JSON.
        """
        data: bytes | None
        if body is None:
            data = None
        elif isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        url = path if path.startswith("http") else self.url + path
        req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(req, timeout=timeout) as answer:
                content = answer.read()
                kind = answer.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise OrthancError(f"{method} {path} -> HTTP {exc.code}: {detail}") from None
        if kind.endswith("json") and content:
            return json.loads(content)
        return content

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, {} if body is None else body, **kwargs)

    def put(self, path: str, body: Any, **kwargs: Any) -> Any:
        return self.request("PUT", path, body, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    # -- conveniences ------------------------------------------------------------------------

    def instances(self) -> list[str]:
        """The SOP Instance UIDs stored."""
        return sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in self.get("/instances?expand"))

    def studies(self) -> list[str]:
        """The Study Instance UIDs stored."""
        return sorted(s["MainDicomTags"]["StudyInstanceUID"] for s in self.get("/studies?expand"))

    def lookup(self, uid: str) -> list[dict[str, Any]]:
        """Orthanc's IDs for a DICOM UID: [{"ID", "Path", "Type"}]."""
        return list(self.post("/tools/lookup", uid))

    def upload(self, path: Path | str) -> dict[str, Any]:
        """Store a DICOM file over REST (not DICOM): {"ID", "ParentStudy", ...}."""
        return dict(self.post("/instances", Path(path).read_bytes()))


@contextmanager
def running_orthanc(
    tmp_path: Path,
    *,
    aet: str = "ORTHANC",
    modalities: Mapping[str, Sequence[Any] | Mapping[str, Any]] | None = None,
    dicomweb_servers: Mapping[str, Any] | None = None,
    dicom_tls: DicomTls | None = None,
) -> Iterator[Orthanc]:
    """Start an Orthanc in a new folder under ``tmp_path``; stop it and wait for it on exit.

    ``modalities``: name -> (AET, host, port), Orthanc's "DicomModalities" (peers it may query,
    move from, and C-STORE / C-MOVE to). ``dicomweb_servers``: name -> URL (or Orthanc's
    [URL, user, password] / {"Url": ...} forms), the DICOMweb plugin's "Servers".
    ``dicom_tls``: DICOM over TLS only (plain connections refused), see ``DicomTls``.
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"orthanc-{aet}-", dir=tmp_path))
    orthanc = Orthanc(
        workdir,
        aet=aet,
        modalities=modalities,
        dicomweb_servers=dicomweb_servers,
        dicom_tls=dicom_tls,
    )
    orthanc.start()
    try:
        yield orthanc
    finally:
        orthanc.stop()
