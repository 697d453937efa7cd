"""Object stores through Beam FileSystems: the job's filesystem flags applied early, one S3 client a process.

Beam hands its filesystems their options only when a `beam.Pipeline` is built; everything the job does before
that (listing manifests, the lock, recovering journals, settling earlier runs, the key index) and every command
that builds no pipeline (`search`) must apply them first, or an `s3://` path fails with "Must provide one of
client or options".

Beam's S3 filesystem builds a new boto3 client for every operation (170-210 ms of CPU each, measured on this
machine against moto's server: a create-plus-rename commit cost about 480 ms of CPU). `share_s3_clients` makes
it build one per process and set of options; the client is thread-safe, the small per-operation wrapper around
it (which keeps a download's position) is still made per operation.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Dict, Optional, Sequence, Tuple

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

__all__ = ["StoreUnreachable", "apply_filesystem_options", "check_stores_reachable", "is_object_store",
           "read_whole", "s3_client_kwargs", "share_s3_clients"]

_LOGGER = logging.getLogger(__name__)
# Stores whose uploads appear whole or not at all, and where a rename is a copy plus a delete: a commit writes
# the final name directly there (a temporary name would cost two more requests and leave the same guarantee).
_OBJECT_STORE_SCHEMES = ("s3", "gs", "azfs")

# The launcher's first touch of each bucket: Beam's S3 client retries a refused connection for about 8.5
# minutes (measured against a closed port) before failing, so a wrong endpoint URL would look like a hang.
# One attempt of at most 5 s to connect, one retry, before anything is paid for; the workers keep Beam's retries.
_PROBE_CONNECT_SEC = 5
_PROBE_READ_SEC = 10
_PROBE_ATTEMPTS = 2  # botocore's total attempts, the first included
_clients: Dict[Tuple, object] = {}
_clients_lock = threading.Lock()
_installed = False


def is_object_store(path: str) -> bool:
    """True for s3://, gs:// and azfs:// paths: whole-object uploads, no atomic rename."""
    return FileSystems.get_scheme(path) in _OBJECT_STORE_SCHEMES


def apply_filesystem_options(args: Sequence[str]) -> PipelineOptions:
    """Gives Beam's filesystems the S3, GCS, Azure and HDFS flags among `args` (the config's `beam.args` and
    the command line's Beam flags), before the first path is touched. Returns the options."""
    share_s3_clients()
    options = PipelineOptions(list(args))
    FileSystems.set_options(options)
    return options


class StoreUnreachable(Exception):
    """A bucket the job needs cannot be reached (wrong endpoint, no such bucket, no credentials): the user's to
    fix, said in one line before any call."""


def check_stores_reachable(paths: Sequence[str], options: PipelineOptions) -> None:
    """Touches each S3 bucket among `paths` once with a bounded client (seconds, not Beam's minutes of
    retries), so an unreachable endpoint, a missing bucket or missing credentials stop the job before any
    call. Other refusals (a key without s3:ListBucket, say) are left to the operations that need them."""
    buckets = sorted({p[len("s3://"):].split("/", 1)[0] for p in paths if p and p.startswith("s3://")})
    if not buckets or not share_s3_clients():
        return
    import boto3
    from botocore import exceptions as errors
    from botocore.config import Config

    kwargs = s3_client_kwargs(options)
    endpoint = kwargs.get("endpoint_url") or "AWS S3"
    config = Config(connect_timeout=_PROBE_CONNECT_SEC, read_timeout=_PROBE_READ_SEC,
                    retries={"max_attempts": _PROBE_ATTEMPTS, "mode": "standard"})
    client = boto3.session.Session().client(service_name="s3", config=config, **kwargs)
    for bucket in buckets:
        try:
            client.head_bucket(Bucket=bucket)
        except (errors.EndpointConnectionError, errors.ConnectTimeoutError, errors.ReadTimeoutError) as exc:
            raise StoreUnreachable(
                f"s3://{bucket} cannot be reached: {endpoint} does not answer ({type(exc).__name__}); check "
                "--s3_endpoint_url in beam.args (or the network) and run again") from None
        except errors.NoCredentialsError:
            raise StoreUnreachable(
                f"s3://{bucket} cannot be reached: no S3 credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or --s3_access_key_id and --s3_secret_access_key in beam.args)") from None
        except errors.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket"):
                raise StoreUnreachable(f"s3://{bucket} does not exist at {endpoint}; create the bucket or fix "
                                       "the path") from None
            _LOGGER.debug("s3://%s answered %s to a HEAD; left to the operations that need it", bucket, code)


def read_whole(path: str) -> bytes:
    """A small object's bytes. On S3 one GET through the shared client: Beam's reader sends a HEAD first for
    the size (a round trip more a file; finalize of 10,000 rows read about 40 files twice over)."""
    options = getattr(FileSystems, "_pipeline_options", None)
    if path.startswith("s3://") and options is not None and share_s3_clients():
        bucket, _, key = path[len("s3://"):].partition("/")
        try:
            return _shared_client(options).get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception:  # Beam's reader says it in Beam's words (a missing file is its BeamIOError)
            pass
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read()


def s3_client_kwargs(options) -> dict:
    """boto3 client arguments from the job's S3 flags (PipelineOptions or a dict of them), as Beam's own S3
    client builds them: Beam 2.78's `client_options` (the --aws_* defaults under the --s3_* flags, secrets
    resolved), or on 2.77, which lacks it, the --s3_* flags as its client reads them."""
    from apache_beam.options.pipeline_options import PipelineOptions, S3Options

    try:
        from apache_beam.io.aws.clients import client_options
    except ImportError:
        client_options = None
    if client_options is not None:
        return client_options.get_client_kwargs(options, S3Options)
    if isinstance(options, PipelineOptions):
        values = options.view_as(S3Options).get_all_options()
    else:
        values = dict(options)
    return {"aws_access_key_id": values.get("s3_access_key_id"),
            "aws_secret_access_key": values.get("s3_secret_access_key"),
            "aws_session_token": values.get("s3_session_token"), "region_name": values.get("s3_region_name"),
            "endpoint_url": values.get("s3_endpoint_url"), "use_ssl": not values.get("s3_disable_ssl", False),
            "verify": values.get("s3_verify")}


def _api_version(options) -> Optional[str]:
    from apache_beam.options.pipeline_options import PipelineOptions, S3Options

    if isinstance(options, PipelineOptions):
        return options.view_as(S3Options).s3_api_version
    return dict(options).get("s3_api_version")


def _shared_client(options) -> object:
    import boto3

    api_version = _api_version(options)
    kwargs = s3_client_kwargs(options)
    # The pid: a forked worker must not use its parent's connections.
    key = (os.getpid(), api_version, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = boto3.session.Session().client(service_name="s3", api_version=api_version, **kwargs)
            _clients[key] = client
    return client


def share_s3_clients() -> bool:
    """Makes Beam's S3 filesystem reuse one boto3 client per process and options (idempotent). False when
    Beam's S3 support (apache-beam[aws]) is not installed."""
    global _installed
    if _installed:
        return True
    try:
        from apache_beam.io.aws.clients.s3 import boto3_client
    except ImportError:
        return False
    if getattr(boto3_client, "boto3", None) is None:
        return False

    original_init = boto3_client.Client.__init__

    def __init__(self, options, _original=original_init):
        try:
            self.client = _shared_client(options)
        except Exception:  # an option Beam knows better than this shortcut: Beam's own way
            _original(self, options)
            return
        self._download_request: Optional[object] = None
        self._download_stream = None
        self._download_pos = 0

    boto3_client.Client.__init__ = __init__
    _upload_small_objects_in_one_request()
    _installed = True
    return True


def _upload_small_objects_in_one_request() -> None:
    """Beam's S3 writer starts a multipart upload when a file is opened and completes it when it is closed:
    three requests for the smallest file, and none at all for an empty one (S3 refuses a multipart upload
    of no parts: MalformedXML). Here the multipart upload starts only once a 5 MB part is buffered; a file
    closed before that is one `put_object`, empty or not."""
    from apache_beam.io.aws import s3io
    from apache_beam.io.aws.clients.s3 import messages

    uploader = s3io.S3Uploader
    original_put, original_finish = uploader.put, uploader.finish
    part_bytes = 5 * 1024 * 1024  # Beam's MIN_WRITE_SIZE: the size at which it sends a part

    def __init__(self, client, path, mime_type="application/octet-stream"):
        self._client = client
        self._path = path
        self._bucket, self._name = s3io.parse_s3_path(path)
        self._mime_type = mime_type
        self.part_number = 1
        self.buffer = b""
        self.last_error = None
        self.upload_id = None
        self.parts = []

    def put(self, data):
        if self.upload_id is None and len(self.buffer) + memoryview(data).nbytes >= part_bytes:
            self._start_upload()
        original_put(self, data)

    def finish(self):
        if self.upload_id is not None:
            original_finish(self)
            return
        try:
            self._client.client.put_object(Bucket=self._bucket, Key=self._name, Body=self.buffer,
                                           ContentType=self._mime_type)
        except Exception as exc:
            raise messages.S3ClientError(str(exc), boto3_client_error_code(exc)) from exc

    uploader.__init__, uploader.put, uploader.finish = __init__, put, finish


def boto3_client_error_code(exc: BaseException):
    return getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
