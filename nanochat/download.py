"""
Resumable HTTP downloads (with requests): a file arrives as path + ".part", resumed with a Range
header when the .part is there, retried with exponential backoff, and renamed to path only once
it is complete (and, when asked, checked). FineWeb-Edu shards (nanochat.fineweb), TinyStories
(nanochat.tinystories) and the chat tasks' files (nanochat.tasks) all come through download_file.

Library API: download_file(url, path, ...), DownloadError (.status: the HTTP status of a refusal).
"""
import os
import re
import time

from nanochat.common import print0


class DownloadError(Exception):
    """status: the HTTP status of a refusal (401, 403, 404, ...), None for other failures."""
    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class _Permanent(Exception):
    """An answer that retrying will not change (404, 403, ...)."""
    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class _Retry(Exception):
    """A transfer that ended badly but may work the next time (short read, bad range)."""


def _total_from_content_range(value):
    # "bytes 100-199/5000" or "bytes */5000"
    m = re.fullmatch(r"bytes (\*|(\d+)-\d+)/(\d+|\*)", (value or "").strip())
    if not m:
        return None, None
    start = int(m.group(2)) if m.group(2) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, total


def _download_attempt(url, part, headers, timeout, on_bytes, stop):
    import requests
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = dict(headers)
    if have:
        headers["Range"] = f"bytes={have}-"
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as r:
        if r.status_code == 416 and have:
            # nothing left to send: either the .part is already complete, or it is bad
            _, total = _total_from_content_range(r.headers.get("Content-Range"))
            if total == have:
                return
            os.remove(part)
            raise _Retry(f"server refused the range of a {have}-byte .part file; starting over")
        if r.status_code in (400, 401, 403, 404, 410):
            hint = " (set HF_TOKEN?)" if r.status_code in (401, 403) else ""
            raise _Permanent(f"HTTP {r.status_code} {r.reason}{hint}", r.status_code)
        r.raise_for_status()  # 5xx, 429, ...: retried
        if r.status_code == 206:
            start, total = _total_from_content_range(r.headers.get("Content-Range"))
            if start != have:
                os.remove(part)
                raise _Retry(f"server sent bytes from {start}, asked from {have}; starting over")
            mode = "ab"
        else:
            # 200: the server ignored Range (or there was no .part): the body is the whole file
            total = int(r.headers["Content-Length"]) if "Content-Length" in r.headers else None
            mode = "wb"
        with open(part, mode) as f:
            for chunk in r.iter_content(1 << 20):
                if stop is not None and stop.is_set():
                    raise DownloadError(f"{os.path.basename(url)}: interrupted")  # keeps the .part
                f.write(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
    size = os.path.getsize(part)
    if total is not None and size != total:
        if size > total:
            os.remove(part)
        raise _Retry(f"connection ended at {size:,d} of {total:,d} bytes")


def download_file(url, path, max_attempts=5, backoff=2.0, timeout=30, headers=None, on_bytes=None, stop=None,
                  validate=None, log=print0):
    """
    Download url to path through path + ".part": resumed with a Range header when a .part is
    there, retried with exponential backoff (backoff * 2^k seconds), and renamed to path only
    once its size matches what the server announced and validate(part) (if given) returns no
    complaint. On failure raises DownloadError, leaves no file at path and keeps the .part
    (unless the server said the file does not exist, or sent a bad file), so the next call resumes.
    """
    import requests
    # identity: no compressed transfer, so byte counts and ranges are the file's own
    headers = {"Accept-Encoding": "identity", **(headers or {})}
    part = path + ".part"
    name = os.path.basename(path)
    for attempt in range(1, max_attempts + 1):
        if stop is not None and stop.is_set():
            raise DownloadError(f"{name}: interrupted")
        try:
            _download_attempt(url, part, headers, timeout, on_bytes, stop)
            complaint = validate(part) if validate else None
            if complaint:
                raise _Permanent(complaint)
            os.replace(part, path)
            return path
        except _Permanent as e:
            if os.path.exists(part):
                os.remove(part)
            raise DownloadError(f"{name}: {e}", e.status) from None
        except (requests.RequestException, _Retry) as e:
            if attempt == max_attempts:
                raise DownloadError(f"{name}: {e} (gave up after {max_attempts} attempts)") from None
            wait = backoff * 2 ** (attempt - 1)
            log(f"{name}: attempt {attempt}/{max_attempts} failed ({e}); retrying in {wait:.0f}s")
            if stop is not None:
                stop.wait(wait)
            else:
                time.sleep(wait)
