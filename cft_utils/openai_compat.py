"""A minimal client for OpenAI-compatible ``/chat/completions`` endpoints (OpenAI, vLLM, TGI, llama.cpp server).

Plain urllib, no SDK dependency. The API key travels only in the ``Authorization`` header: callers keep it
out of names, reprs, results and error messages. Transient failures (HTTP 408/409/429/5xx, network errors)
are retried with exponential backoff; other HTTP errors are raised at once.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

RETRIED_HTTP_CODES = (408, 409, 429)


def post_chat_completions(base_url: str, payload: dict, api_key: str | None = None, *, timeout: float = 60.0,
                          max_retries: int = 4, backoff: float = 2.0, what: str = "endpoint") -> dict:
    """POST ``payload`` to ``<base_url>/chat/completions`` and return the decoded JSON answer.

    Raises ``RuntimeError`` naming ``what`` and the URL (never the key): "answered HTTP <code>" for a refused
    request, "unreachable" when the host cannot be reached after the retries.
    """
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    data = json.dumps(payload).encode()
    last: RuntimeError | None = None
    for attempt in range(max_retries + 1):
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", "replace")[:300]
            last = RuntimeError(f"{what} {url} answered HTTP {e.code}: {body}")
            if e.code not in RETRIED_HTTP_CODES and e.code < 500:
                raise last from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            last = RuntimeError(f"{what} {url} unreachable: {getattr(e, 'reason', e)}")
        if attempt < max_retries:
            time.sleep(backoff * (2**attempt))
    raise RuntimeError(f"{last} (after {max_retries + 1} attempts)")
