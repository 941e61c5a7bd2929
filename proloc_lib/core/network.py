"""Network reachability: a fast, clear failure when a source cannot be reached (offline)."""

from __future__ import annotations

import sys
import threading
from urllib.parse import urlsplit

from proloc_lib.core.errors import RunFailed

_OFFLINE_HINT = "run the full profile on Colab or any machine with internet (see README)"


class OfflineError(RunFailed, RuntimeError):
    """A model hub (or other download source) cannot be reached from this machine.

    A ``RunFailed``: command lines wrapped with ``errors.cli_main`` print its one line, exit 1.
    """


# -- network and devices -------------------------------------------------------------------------
def _probe(url: str, timeout: float) -> str | None:
    """None when ``url`` answers over HTTP (any status below 500), else the reason it did not."""
    import requests

    try:
        r = requests.head(url, timeout=(timeout, timeout), allow_redirects=True)
    except requests.RequestException as exc:  # ConnectionError, Timeout, SSLError, ...
        return f"{type(exc).__name__}: {exc}"
    if r.status_code >= 500:
        return f"HTTP {r.status_code}"
    return None  # 401/404 still prove the host is reachable; a wrong id fails later, clearly


def check_reachable(urls: list[str], timeout: float = 5.0, *, hint: str | None = None) -> None:
    """Raise OfflineError naming every URL that does not answer within ``timeout`` seconds.

    Each probe runs in a daemon thread with a hard deadline, because requests' timeout does
    not cover DNS resolution, which can stall far longer on a machine without network. The
    message is one short line (hosts, kind of failure, ``hint`` or the default advice); the
    full per-URL reasons are kept in the exception's ``details``.
    """
    results: dict[str, str | None] = {}

    def run(u: str) -> None:
        results[u] = _probe(u, timeout)

    threads = [threading.Thread(target=run, args=(u,), daemon=True) for u in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 1.0)  # all probes run in parallel, so the total wait is ~timeout
    bad = [u for u in urls if results.get(u, "timeout") is not None]
    if bad:
        # one short line: the hosts and the kind of failure, not the raw exception texts
        hosts = list(dict.fromkeys(urlsplit(u).netloc or u for u in bad))
        kinds = sorted({_short_reason(results.get(u), timeout) for u in bad})
        if "google.colab" in sys.modules:  # "run it on Colab" would not help there
            hint = "check this runtime's internet connection (Runtime > Disconnect and delete runtime)"
        exc = OfflineError(f"cannot reach {', '.join(hosts)} ({'; '.join(kinds)}): "
                           f"{hint or _OFFLINE_HINT}.")
        exc.details = {u: results.get(u) or f"no answer within {timeout:g} s" for u in bad}
        raise exc


def _short_reason(reason: str | None, timeout: float) -> str:
    """'ConnectionError' / 'HTTP 503' / 'no answer within 5 s' from a probe's full reason."""
    if reason is None:
        return f"no answer within {timeout:g} s"
    return reason.split(":", 1)[0]
