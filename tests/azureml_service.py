"""A small stand-in for the Azure ML service, on 127.0.0.1, for the tests of submit / stream / download.

No Azure subscription is reachable from here, so the boundary is drawn at the HTTP the real `azure-ai-ml` SDK
sends. The SDK talks to several hosts (management.azure.com for the workspace, computes, datastores and jobs;
<account>.blob.core.windows.net for uploads and outputs; the region's run history for logs). It reaches this
server as its HTTPS proxy (HTTPS_PROXY): each CONNECT is answered with TLS under a certificate this module makes
for those host names, signed by a CA the client trusts through REQUESTS_CA_BUNDLE. Nothing leaves the machine.

The routes answer the requests the SDK made in a recorded session (`Service.requests` keeps them: method, host,
path); each handler says what it stands for. A job "runs" when it is created: its stdout log is the text the
test gives, its outputs the files the test gives, and its status moves Running -> Completed (or Failed) on the
first poll after creation. With `Service.execute`, a job runs for real instead: the test's function lays out the
uploaded code and inputs (`materialize`) and runs the job's command; the job completes when it returns.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

SUB, GROUP, WS = "00000000-0000-0000-0000-000000000001", "rg", "ws"
ACCOUNT = "slimtunestore"
REGION = "westeurope"
HOSTS = [
    "management.azure.com",
    f"{ACCOUNT}.blob.core.windows.net",
    f"{REGION}.api.azureml.ms",
    "ml.azure.com",
    "kv.vault.azure.net",
    "login.microsoftonline.com",
    "localhost",
]


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, server cert.pem, server key.pem): a CA and a certificate for HOSTS signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slimtune test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(h) for h in HOSTS] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTS[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "cert.pem").write_bytes(cert.public_bytes(pem))
    (folder / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return folder / "ca.pem", folder / "cert.pem", folder / "key.pem"


@dataclass
class Job:
    name: str
    body: dict[str, Any]
    status: str = "Running"
    polls: int = 0
    worker: threading.Thread | None = None  # the replay of its command (Service.execute), while it runs


@dataclass
class Service:
    """What the fake workspace holds; the test sets `log`, `outputs`, `fail` and reads `requests`."""

    computes: list[str] = field(default_factory=lambda: ["gpu-cluster"])
    jobs: dict[str, Job] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)  # "container/path" -> content
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    log: str = "slimtune job log\n"
    outputs: dict[str, bytes] = field(default_factory=dict)  # relative path in the job's output -> content
    fail: str | None = None  # the job fails with this error message
    unknown: list[tuple[str, str, str]] = field(default_factory=list)
    assets: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)  # the key vault's
    sign_ins: list[tuple[str, str, str]] = field(default_factory=list)  # (tenant, client id, grant)
    hold: bool = False  # jobs keep running
    interrupt: bool = False  # the first poll of a run's details interrupts the client's main thread (Ctrl-C)
    blocks: dict[tuple[str, str], bytes] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    # run each created job for real: (service, job) -> (exit code, log, output files); the job runs until it
    # returns, then completes (or fails, for a non-zero exit code) with that log and those outputs
    execute: Any = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    service: Service
    tls: ssl.SSLContext
    host = ""

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_CONNECT(self) -> None:
        self.host = self.path.split(":")[0]
        self.send_response(200, "Connection established")
        self.end_headers()
        self.wfile.flush()
        conn = self.tls.wrap_socket(self.connection, server_side=True)
        self.connection = conn
        self.rfile = conn.makefile("rb")
        self.wfile = conn.makefile("wb")
        self.close_connection = False  # http.client tunnels with HTTP/1.0, which would end the connection

    def _any(self) -> None:
        url = urlparse(self.path)
        host = url.hostname or self.host
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.service.requests.append((self.command, host, url.path))
        status, headers, payload = route(
            self.service, self.command, host, url.path, parse_qs(url.query), body, self.headers
        )
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _any


ARM = (
    f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.MachineLearningServices/workspaces/{WS}"
)
JSON = {"Content-Type": "application/json"}


def _json(data: Any, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, JSON, json.dumps(data).encode()


def _not_found(what: str) -> tuple[int, dict[str, str], bytes]:
    return _json({"error": {"code": "ResourceNotFound", "message": f"{what} not found"}}, 404)


def workspace() -> dict[str, Any]:
    return {
        "id": ARM,
        "name": WS,
        "type": "Microsoft.MachineLearningServices/workspaces",
        "location": REGION,
        "kind": "Default",
        "properties": {
            "friendlyName": WS,
            "discoveryUrl": f"https://{REGION}.api.azureml.ms/discovery",
            "workspaceId": "11111111-2222-3333-4444-555555555555",
            "storageAccount": f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.Storage/storageAccounts/{ACCOUNT}",
            "keyVault": f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.KeyVault/vaults/kv",
            "mlFlowTrackingUri": f"azureml://{REGION}.api.azureml.ms/mlflow/v1.0{ARM}",
        },
    }


def compute(name: str) -> dict[str, Any]:
    return {
        "id": f"{ARM}/computes/{name}",
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces/computes",
        "location": REGION,
        "properties": {
            "computeType": "AmlCompute",
            "computeLocation": REGION,
            "provisioningState": "Succeeded",
            "properties": {
                "vmSize": "Standard_NC24ads_A100_v4",
                "scaleSettings": {"maxNodeCount": 2, "minNodeCount": 0},
            },
        },
    }


def datastore(name: str = "workspaceblobstore") -> dict[str, Any]:
    return {
        "id": f"{ARM}/datastores/{name}",
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces/datastores",
        "properties": {
            "datastoreType": "AzureBlob",
            "accountName": ACCOUNT,
            "containerName": "azureml" if name == "workspaceartifactstore" else "azureml-blobstore",
            "endpoint": "core.windows.net",
            "protocol": "https",
            "isDefault": True,
            "credentials": {"credentialsType": "AccountKey"},
        },
    }


def route(service: Service, method: str, host: str, path: str, query: dict, body: bytes, headers: Any):
    if host == "management.azure.com":
        return arm(service, method, path, query, body)
    if host == f"{ACCOUNT}.blob.core.windows.net":
        return blob(service, method, unquote(path), query, body, headers)
    if host == f"{REGION}.api.azureml.ms":
        return regional(service, method, path, query, body)
    if host == "kv.vault.azure.net":
        return key_vault(service, method, path, headers)
    if host == "login.microsoftonline.com":
        return sign_in(service, method, path, body)
    service.unknown.append((method, host, path))
    return (
        404,
        JSON,
        json.dumps({"error": {"code": "NotFound", "message": f"{method} {host}{path}"}}).encode(),
    )


def arm(service: Service, method: str, path: str, query: dict, body: bytes):
    """Azure Resource Manager: the workspace, its computes, datastores, assets (code, environments) and jobs."""
    if path == ARM and method == "GET":
        return _json(workspace())
    if path == f"{ARM}/datastores" and method == "GET":  # ?isDefault=true
        return _json({"value": [datastore()]})
    found = re.fullmatch(re.escape(ARM) + r"/datastores/([^/]+)(/listSecrets)?", path)
    if found:
        if found.group(2):  # the account key the SDK signs its uploads with (not checked here)
            return _json({"secretsType": "AccountKey", "key": "a2V5"})
        return _json(datastore(found.group(1)))
    found = re.fullmatch(re.escape(ARM) + r"/(codes|environments|data|models)/([^/]+)/versions", path)
    if found and method == "GET":  # the SDK looks for an asset of the same content hash before uploading
        wanted = query.get("hash", [None])[0]
        same = [v for k, v in service.assets.items() if k.startswith(path + "/") and v.get("hash") == wanted]
        return _json({"value": [v["body"] for v in same]})
    found = re.fullmatch(re.escape(ARM) + r"/codes/([^/]+)/versions/([^/]+)/startPendingUpload", path)
    if found:  # where the code snapshot goes: a blob folder with a SAS (not checked here)
        folder = f"https://{ACCOUNT}.blob.core.windows.net/azureml-blobstore/LocalUpload/{found.group(1)}"
        return _json(
            {
                "blobReferenceForConsumption": {
                    "blobUri": folder,
                    "credential": {"credentialType": "SAS", "sasUri": f"{folder}?sv=2021-08-06&sig=test"},
                },
                "pendingUploadId": found.group(1),
                "pendingUploadType": "TemporaryBlobReference",
            }
        )
    found = re.fullmatch(
        re.escape(ARM) + r"/(codes|environments|data|models)/([^/]+)(/versions/([^/]+))?", path
    )
    if found:
        if method == "PUT":  # an asset (the code snapshot, an environment): kept as given
            data = json.loads(body or b"{}")
            data.update(id=path, name=found.group(4) or found.group(2))
            props = data.get("properties") or {}
            service.assets[path] = {
                "body": data,
                "hash": (props.get("properties") or {}).get("hash") or props.get("hash"),
            }
            return _json(data, 201)
        if path in service.assets:
            return _json(service.assets[path]["body"])
        return _not_found(path)
    found = re.fullmatch(re.escape(ARM) + r"/computes/([^/]+)", path)
    if found and method == "GET":
        name = found.group(1)
        return _json(compute(name)) if name in service.computes else _not_found(f"compute {name}")
    if path == f"{ARM}/computes" and method == "GET":
        return _json({"value": [compute(n) for n in service.computes]})
    found = re.fullmatch(re.escape(ARM) + r"/jobs/([^/]+)/cancel", path)
    if found and method == "POST" and found.group(1) in service.jobs:  # done at once: no operation to poll
        job = service.jobs[found.group(1)]
        job.status = job.status if job.status in ("Completed", "Failed") else "Canceled"
        return 200, JSON, b""
    found = re.fullmatch(re.escape(ARM) + r"/jobs/([^/]+)", path)
    if found and method == "GET":
        job = service.jobs.get(found.group(1))
        return _json(job_view(service, job)) if job else _not_found(f"job {found.group(1)}")
    if found and method == "PUT":  # the job is created and "runs": its log and outputs are the test's
        name = found.group(1)
        data = json.loads(body)
        data.update(id=path, name=name)
        data["properties"]["status"] = "Running"
        data["properties"]["services"] = {
            "Studio": {"endpoint": f"https://ml.azure.com/runs/{name}", "jobServiceType": "Studio"}
        }
        job = service.jobs[name] = Job(name, data)
        if service.execute is not None:
            job.worker = threading.Thread(target=_execute, args=(service, job), daemon=True)
            job.worker.start()
            return _json(data, 201)
        _finish(service, job, service.outputs, service.log)
        return _json(data, 201)
    service.unknown.append((method, "management.azure.com", path))
    return 404, JSON, json.dumps({"error": {"code": "NotFound", "message": f"{method} {path}"}}).encode()


def _finish(service: Service, job: Job, outputs: dict[str, bytes], log: str) -> None:
    for rel, content in outputs.items():
        service.blobs[f"azureml-blobstore/azureml/{job.name}/output/{rel}"] = content
    service.blobs[f"azureml/ExperimentRun/dcid.{job.name}/user_logs/std_log.txt"] = log.encode()


def _execute(service: Service, job: Job) -> None:
    try:
        code, log, outputs = service.execute(service, job)
    except Exception:  # the stand-in's own failure: the job fails with it, the test sees it in the log
        import traceback

        code, log, outputs = 1, traceback.format_exc(), {}
        service.unknown.append(("EXECUTE", job.name, log))
    if code != 0:
        service.fail = f"Execution failed. User process exited with status code {code}."
    _finish(service, job, outputs, log)
    job.worker = None


def materialize(service: Service, uri: str, target: Path) -> Path:
    """What an input's `azureml://datastores/NAME/paths/P` (or a code asset's blob URL) holds, copied from the
    stored blobs into `target` (a folder; a single file keeps its name inside it, as a uri_file mount does).
    Returns the path the job would see."""
    if uri.startswith("azureml://"):
        store, _, rel = uri.split("/datastores/", 1)[1].partition("/paths/")
        container = datastore(store)["properties"]["containerName"]
    else:  # https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH
        container, _, rel = urlparse(uri).path.lstrip("/").partition("/")
    prefix = f"{container}/{unquote(rel)}"
    if prefix in service.blobs:  # one file
        target.mkdir(parents=True, exist_ok=True)
        (target / Path(prefix).name).write_bytes(service.blobs[prefix])
        return target / Path(prefix).name
    found: dict[str, bytes] = {}
    # the code snapshot went up through its pending upload's SAS URL: blob() read that path's upload id as
    # the container, so it is stored under ID/code/ rather than azureml-blobstore/LocalUpload/ID/code/
    for stored in (prefix, prefix.partition("/LocalUpload/")[2]):
        folder = stored.rstrip("/") + "/"
        found = found or {k[len(folder) :]: v for k, v in service.blobs.items() if k.startswith(folder)}
    if not found:
        raise FileNotFoundError(f"nothing stored at {uri}")
    for rel_path, content in found.items():
        (target / rel_path).parent.mkdir(parents=True, exist_ok=True)
        (target / rel_path).write_bytes(content)
    return target


def regional(service: Service, method: str, path: str, query: dict, body: bytes):
    """The region's endpoints: discovery (where run history is), run history (a run's details and logs)."""
    base = f"https://{REGION}.api.azureml.ms"
    if path == "/discovery":
        return _json(
            {
                "api": base,
                "catalog": base,
                "experimentation": base,
                "gallery": base,
                "history": base,
                "hyperdrive": base,
                "labeling": base,
                "modelmanagement": base,
                "pipelines": base,
                "studio": "https://ml.azure.com",
            }
        )
    found = re.fullmatch(r"/history/v1\.0" + re.escape(ARM) + r"/runs/([^/]+)/details", path)
    if found and found.group(1) in service.jobs:  # what `jobs.stream` polls: status, log files, error
        if service.interrupt:  # as if the user pressed Ctrl-C while the client streams
            service.interrupt = False
            import _thread

            _thread.interrupt_main()
        job = service.jobs[found.group(1)]
        job_view(service, job)
        log = f"https://{ACCOUNT}.blob.core.windows.net/azureml/ExperimentRun/dcid.{job.name}/user_logs/std_log.txt"
        details = {
            "runId": job.name,
            "status": job.status,
            "logFiles": {"user_logs/std_log.txt": f"{log}?sv=x"},
            "warnings": [],
            "target": "gpu-cluster",
            "runDefinition": {},
        }
        if job.status == "Failed":
            details["error"] = {"error": {"code": "UserError", "message": service.fail}}
        return _json(details)
    if path == f"/history/v1.0{ARM}/rundata" and method == "POST":  # a run's outputs, as data asset ids
        name = json.loads(body)["runId"]
        asset = (
            f"azureml://locations/{REGION}/workspaces/ws/data/azureml_{name}_output_data_output/versions/1"
        )
        logs = asset.replace("_output_data_output", "_output_data_default")
        outputs = {
            "output": {"assetId": asset, "type": "uri_folder"},
            "default": {"assetId": logs, "type": "uri_folder"},
        }
        outputs = outputs if name in service.jobs else {}
        return _json({"runMetadata": {"runId": name, "outputs": outputs}})
    if path == f"/data/v1.0{ARM}/dataversion/batchGetResolvedUris" and method == "POST":  # asset id -> path
        ids = json.loads(body)["values"]
        uris = {}
        for asset in ids:
            name, _, which = (
                asset.split("/data/azureml_")[1].rsplit("/versions/")[0].rpartition("_output_data_")
            )
            uri = (
                f"azureml://datastores/workspaceblobstore/paths/azureml/{name}/output/"
                if which == "output"  # the job's output folder; "default": its artifacts (logs)
                else f"azureml://datastores/workspaceartifactstore/paths/ExperimentRun/dcid.{name}/"
            )
            uris[asset] = {"uri": uri, "type": "uri_folder"}
        return _json({"values": uris})
    service.unknown.append((method, f"{REGION}.api.azureml.ms", path))
    return _not_found(path)


def sign_in(service: Service, method: str, path: str, body: bytes):
    """Microsoft Entra ID for a service principal (AZURE_TENANT_ID / AZURE_CLIENT_ID / AZURE_CLIENT_SECRET): the
    tenant's OpenID configuration, then a token for the client-credentials grant (the secret is not checked;
    which client asked is recorded in `service.sign_ins`)."""
    tenant = path.strip("/").split("/")[0]
    base = f"https://login.microsoftonline.com/{tenant}"
    if path.endswith("/v2.0/.well-known/openid-configuration"):
        return _json(
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "issuer": f"{base}/v2.0",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            }
        )
    if path.endswith("/oauth2/v2.0/token") and method == "POST":
        form = parse_qs(body.decode())
        service.sign_ins.append((tenant, form.get("client_id", [""])[0], form.get("grant_type", [""])[0]))
        return _json({"token_type": "Bearer", "expires_in": 3600, "access_token": "signed-in-token"})
    service.unknown.append((method, "login.microsoftonline.com", path))
    return _not_found(path)


def key_vault(service: Service, method: str, path: str, headers: Any):
    """The workspace's key vault: a first request without a token gets the challenge that names the token's
    audience (how the key vault client starts), then the secret."""
    if not (headers.get("Authorization") or "").startswith("Bearer "):
        challenge = 'Bearer authorization="https://login.microsoftonline.com/tenant", resource="https://vault.azure.net"'
        return 401, {**JSON, "WWW-Authenticate": challenge}, b'{"error": {"code": "Unauthorized"}}'
    found = re.fullmatch(r"/secrets/([^/]+)/?", path)
    if found and method == "GET" and found.group(1) in service.secrets:
        name = found.group(1)
        return _json(
            {
                "value": service.secrets[name],
                "id": f"https://kv.vault.azure.net/secrets/{name}/1",
                "attributes": {"enabled": True},
            }
        )
    return _json({"error": {"code": "SecretNotFound", "message": f"secret {path} not found"}}, 404)


def job_view(service: Service, job: Job) -> dict[str, Any]:
    """Running on the first look after creation, then Completed (or Failed with the test's error)."""
    job.polls += 1
    if job.polls > 2 and job.status == "Running" and not service.hold and job.worker is None:
        job.status = "Failed" if service.fail else "Completed"
    job.body["properties"]["status"] = job.status
    if job.status == "Failed":
        job.body["properties"]["error"] = {"code": "UserError", "message": service.fail}
    if job.status == "Completed":
        job.body["properties"]["outputs"] = {
            "output": {
                "jobOutputType": "uri_folder",
                "mode": "ReadWriteMount",
                "uri": f"azureml://datastores/workspaceblobstore/paths/azureml/{job.name}/output/",
            }
        }
    return job.body


def blob(service: Service, method: str, path: str, query: dict, body: bytes, headers: Any):
    """Blob storage: uploads (single PUT, or blocks then a block list), properties, downloads, listings."""
    container, _, name = path.lstrip("/").partition("/")
    key = f"{container}/{name}"
    comp = query.get("comp", [None])[0]
    xml = {"Content-Type": "application/xml"}
    if method == "PUT" and comp == "block":
        service.blocks[(key, query["blockid"][0])] = body
        return 201, {}, b""
    if method == "PUT" and comp == "blocklist":
        ids = re.findall(rb"<(?:Latest|Uncommitted|Committed)>([^<]+)</", body)
        service.blobs[key] = b"".join(service.blocks.pop((key, i.decode())) for i in ids)
        return 201, {"ETag": '"1"'}, b""
    if method == "PUT" and comp == "metadata":
        service.metadata[key] = {k[10:]: v for k, v in headers.items() if k.lower().startswith("x-ms-meta-")}
        return 200, {"ETag": '"1"'}, b""
    if method == "PUT" and query.get("restype") == ["container"]:
        return 201, {"ETag": '"1"'}, b""
    if method == "PUT":
        service.blobs[key] = body
        service.metadata[key] = {k[10:]: v for k, v in headers.items() if k.lower().startswith("x-ms-meta-")}
        return 201, {"ETag": '"1"', "Content-MD5": ""}, b""
    if method == "GET" and comp == "list":  # ?restype=container&comp=list&prefix=...
        prefix = query.get("prefix", [""])[0]
        items = "".join(
            f"<Blob><Name>{k.partition('/')[2]}</Name><Properties><Content-Length>{len(v)}</Content-Length>"
            "<BlobType>BlockBlob</BlobType></Properties></Blob>"
            for k, v in sorted(service.blobs.items())
            if k.startswith(f"{container}/{prefix}")
        )
        listing = f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults><Prefix>{prefix}</Prefix><Blobs>{items}</Blobs><NextMarker /></EnumerationResults>'
        return 200, xml, listing.encode()
    if method in ("GET", "HEAD"):
        if key not in service.blobs:
            return (
                404,
                {**xml, "x-ms-error-code": "BlobNotFound"},
                b'<?xml version="1.0"?><Error><Code>BlobNotFound</Code></Error>',
            )
        data = service.blobs[key]
        meta = {f"x-ms-meta-{k}": v for k, v in service.metadata.get(key, {}).items()}
        head = {
            "Content-Type": "application/octet-stream",
            "x-ms-blob-type": "BlockBlob",
            "ETag": '"1"',
            "Last-Modified": "Sun, 29 Nov 2026 10:00:00 GMT",
            **meta,
        }
        wanted = headers.get("x-ms-range") or headers.get("Range")
        if wanted and method == "GET":
            start, _, end = wanted.split("=")[1].partition("-")
            part = data[int(start) : int(end) + 1 if end else None]
            head["Content-Range"] = f"bytes {start}-{int(start) + len(part) - 1}/{len(data)}"
            return 206, head, part
        return 200, head, data if method == "GET" else b""
    return 404, xml, b""


class Server:
    """The service on 127.0.0.1:PORT, and the environment a client needs to reach it."""

    def __init__(self, folder: Path):
        ca, cert, key = make_certificates(folder)
        self.ca = ca
        self.service = Service()
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        handler = type("BoundHandler", (Handler,), {"service": self.service, "tls": tls})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def env(self) -> dict[str, str]:
        proxy = f"http://127.0.0.1:{self.port}"
        return {
            "HTTPS_PROXY": proxy,
            "https_proxy": proxy,
            "HTTP_PROXY": proxy,
            "http_proxy": proxy,
            "REQUESTS_CA_BUNDLE": str(self.ca),
            "SSL_CERT_FILE": str(self.ca),
            "NO_PROXY": "",
            "no_proxy": "",
        }

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
