"""A compact client for S3-compatible object stores: it PUTs objects, signed with AWS Signature
Version 4, using the standard library only (boto3 would add some 80 MB to the recorder's memory
for one request type).

Requests are path-style (`<endpoint>/<bucket>/<key>`), which AWS, MinIO, Ceph, Garage and the
object stores of NAS boxes all accept. The payload's SHA-256 is signed, so the server refuses a
body that was changed or cut short on the way.
"""

import hashlib
import hmac
import http.client
import re
import ssl
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path

from appliance.errors import CallrecError

ALGORITHM = "AWS4-HMAC-SHA256"
UNRESERVED = "-_.~"


class S3Error(CallrecError, OSError):
    """The object store refused a request or could not be reached."""


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret_key: str, date: str, region: str, service: str = "s3") -> bytes:
    """The key of one day, region and service, derived from the secret access key."""
    key = _hmac(f"AWS4{secret_key}".encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def sign(method: str, path: str, headers: dict[str, str], payload_sha256: str, access_key: str,
         secret_key: str, region: str, now: datetime, query: dict[str, str] | None = None) -> dict[str, str]:
    """The headers of a request signed with Signature Version 4: `headers` (which must include
    `host`) plus x-amz-date, x-amz-content-sha256 and Authorization. `path` is already
    URI-encoded."""
    stamp = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    signed = {name.lower(): " ".join(str(value).split()) for name, value in headers.items()}
    signed.update({"x-amz-date": stamp, "x-amz-content-sha256": payload_sha256})
    names = sorted(signed)
    canonical_query = "&".join(f"{urllib.parse.quote(k, safe=UNRESERVED)}={urllib.parse.quote(v, safe=UNRESERVED)}"
                               for k, v in sorted((query or {}).items()))
    canonical = "\n".join([method, path, canonical_query, "".join(f"{n}:{signed[n]}\n" for n in names),
                           ";".join(names), payload_sha256])
    scope = f"{stamp[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    signature = hmac.new(signing_key(secret_key, stamp[:8], region), to_sign.encode(), hashlib.sha256).hexdigest()
    signed["authorization"] = (f"{ALGORITHM} Credential={access_key}/{scope}, "
                               f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return signed


class Bucket:
    """One bucket of an S3-compatible store, reached at `endpoint` (http:// or https://)."""

    def __init__(self, endpoint: str, bucket: str, region: str, access_key: str, secret_key: str,
                 timeout_s: float = 60.0):
        parts = urllib.parse.urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise S3Error(f"S3 endpoint {endpoint!r}: expected http://host[:port] or https://host[:port]")
        self.https = parts.scheme == "https"
        self.host = parts.netloc
        self.bucket = bucket
        self.region = region
        self.access_key = access_key
        self.secret_key = secret_key
        self.timeout_s = timeout_s

    def put(self, key: str, body: bytes | Path, sha256: str, content_type: str) -> None:
        """Store `body` (bytes, or a file streamed from disk) under `key`; `sha256` is its hash,
        which the store checks. Raises S3Error unless the store answers 200."""
        size = len(body) if isinstance(body, bytes) else body.stat().st_size
        self._request("PUT", key, body, sha256, {"content-length": str(size), "content-type": content_type}, (200,))

    def delete(self, key: str) -> None:
        """Remove the object `key` (gone already is fine). Raises S3Error on any other answer."""
        self._request("DELETE", key, b"", hashlib.sha256(b"").hexdigest(), {}, (200, 204))

    def _request(self, method: str, key: str, body: bytes | Path, sha256: str, headers: dict[str, str],
                 expected: tuple[int, ...]) -> None:
        path = "/" + urllib.parse.quote(f"{self.bucket}/{key}", safe="/" + UNRESERVED)
        headers = sign(method, path, {"host": self.host, **headers}, sha256, self.access_key, self.secret_key,
                       self.region, datetime.now(timezone.utc))
        connection = (http.client.HTTPSConnection(self.host, timeout=self.timeout_s,
                                                  context=ssl.create_default_context())
                      if self.https else http.client.HTTPConnection(self.host, timeout=self.timeout_s))
        try:
            if isinstance(body, bytes):
                connection.request(method, path, body=body, headers=headers)
            else:
                with open(body, "rb") as f:
                    connection.request(method, path, body=f, headers=headers)
            response = connection.getresponse()
            answer = response.read(64 * 1024).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            raise S3Error(f"cannot reach {self.host}: {exc}") from None
        finally:
            connection.close()
        if response.status not in expected:
            code = re.search(r"<Code>([^<]*)</Code>", answer)
            message = re.search(r"<Message>([^<]*)</Message>", answer)
            raise S3Error(f"{method} {key} in bucket {self.bucket}: HTTP {response.status} "
                          f"{code.group(1) if code else response.reason}"
                          + (f": {message.group(1)}" if message else ""))
