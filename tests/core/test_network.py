"""The reachability probe: one short error line naming the host, a hard deadline, any HTTP answer passes."""
import time

import pytest
import requests

from proloc_lib.core import network


def test_check_reachable_converts_connection_errors(monkeypatch):
    url_a, url_b = "https://hub.invalid/api/models/a", "https://hub.invalid/api/models/b"

    def fail(url, *args, **kwargs):
        raise (requests.ConnectionError if url == url_a else requests.Timeout)(f"boom {url}")

    monkeypatch.setattr(requests, "head", fail)
    with pytest.raises(network.OfflineError) as err:
        network.check_reachable([url_a, url_b], timeout=0.5)
    msg = str(err.value)
    # one short line naming the host and the kind of failure; full reasons kept in .details
    assert msg.startswith("cannot reach hub.invalid (ConnectionError; Timeout)") and "Colab" in msg
    assert "\n" not in msg and len(msg) < 200 and "boom" not in msg
    assert set(err.value.details) == {url_a, url_b} and "boom" in err.value.details[url_a]


def test_check_reachable_never_hangs(monkeypatch):
    # A stalled DNS lookup is not covered by requests' own timeout; the hard deadline is.
    monkeypatch.setattr(network, "_probe", lambda url, timeout: time.sleep(30))
    t0 = time.perf_counter()
    with pytest.raises(network.OfflineError, match="no answer"):
        network.check_reachable(["https://stalled.invalid/"], timeout=0.2)
    assert time.perf_counter() - t0 < 3


def test_check_reachable_passes_on_any_http_answer(monkeypatch):
    class Resp:
        status_code = 401  # gated/private repos answer 401: the host is still reachable

    monkeypatch.setattr(requests, "head", lambda url, *a, **k: Resp())
    network.check_reachable(["https://huggingface.co/api/models/x/y"])
