"""The Prometheus HTTP API, as VeloFlux uses it: instant and range queries with a
deadline, each answer checked and turned into typed series.

Queries go through ``prometheus-api-client`` (its ``PrometheusConnect`` session) with
its retries switched off: a tick has a budget, and a query that failed is better
reported now than retried three times with back-off. Every failure is one
``PrometheusError`` whose ``kind`` says what happened (``unreachable``, ``timeout``,
``http_error``, ``bad_query``, ``not_json``, ``bad_shape``) and whose message names the
URL; Prometheus's own explanation of a bad query is kept. Samples are floats; NaN and
the infinities Prometheus can return are left to the caller to refuse.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from ipaddress import ip_address
from operator import itemgetter
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from veloflux.errors import SourceUnavailable

if TYPE_CHECKING:
    from prometheus_api_client.prometheus_connect import PrometheusConnect


_first, _second = itemgetter(0), itemgetter(1)


class PrometheusError(SourceUnavailable):
    """A query did not give a usable answer; ``kind`` says why."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Series:
    """One series of an instant query: its labels and its value."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True, eq=False)
class RangeSeries:
    """One series of a range query: its labels, sample times (epoch s) and values, as
    float arrays (read-only by convention)."""

    labels: Mapping[str, str]
    times: np.ndarray
    values: np.ndarray


class PrometheusAPI:
    """Queries against one Prometheus (or a compatible store), with a timeout."""

    def __init__(
        self, url: str, timeout_seconds: float, headers: Mapping[str, str] | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self._headers = dict(headers or {})
        if _loopback(self.url) and not any(k.lower() == "accept-encoding" for k in self._headers):
            # gzip costs Prometheus time to compress a week-long range answer; on
            # loopback there is no bandwidth to save.
            self._headers["Accept-Encoding"] = "identity"
        self._client: PrometheusConnect | None = None

    def _connect(self) -> PrometheusConnect:
        """The client, made on first use: importing it (and requests) is a start-up
        cost only the commands that talk to Prometheus pay."""
        if self._client is None:
            from prometheus_api_client.prometheus_connect import PrometheusConnect
            from urllib3.util.retry import Retry

            self._client = PrometheusConnect(
                url=self.url,
                headers=self._headers,
                retry=Retry(total=0, connect=0, read=0, redirect=0, status=0),
                # requests takes a float; the client's annotation says int
                timeout=self.timeout_seconds,  # type: ignore[arg-type]
            )
        return self._client

    def instant(self, query: str, at: datetime | None = None) -> list[Series]:
        """The query's value now (or at ``at``)."""
        params = {} if at is None else {"time": f"{at.timestamp():.3f}"}
        result = self._call(lambda c: c.custom_query(query, params=params), query)
        out: list[Series] = []
        for item in result:
            labels, sample = self._labels(item, query), item.get("value")
            if not (isinstance(sample, list) and len(sample) == 2):
                raise self._shape(query, "a series without a [time, value] pair")
            try:
                value = _number(sample[1])
            except (TypeError, ValueError, OverflowError):
                raise self._shape(query, f"a sample value {str(sample[1])[:40]!r}") from None
            out.append(Series(labels, value))
        return out

    def range(
        self, query: str, start: datetime, end: datetime, step_seconds: float
    ) -> list[RangeSeries]:
        """The query evaluated every ``step_seconds`` from ``start`` to ``end``."""
        result = self._call(
            lambda c: c.custom_query_range(query, start, end, f"{step_seconds:g}s"), query
        )
        out: list[RangeSeries] = []
        for item in result:
            labels, values = self._labels(item, query), item.get("values")
            if not isinstance(values, list):
                raise self._shape(query, "a series without values")
            try:  # a week at 15 s is 40,320 pairs a series: converted without a loop here
                times = np.fromiter(map(_first, values), float, len(values))
                numbers = np.array(list(map(_second, values)), dtype=float)
            except (TypeError, ValueError, IndexError, KeyError, OverflowError):
                raise self._shape(query, "values that are not [time, value] pairs") from None
            if numbers.shape != times.shape:  # a value that is a list: a 2-D array
                raise self._shape(query, "sample values that are not single numbers")
            if not np.isfinite(times).all():
                raise self._shape(query, "sample times that are not finite numbers")
            out.append(RangeSeries(labels, times, numbers))
        return out

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _call(self, request: Any, query: str) -> list[dict[str, Any]]:
        """Run one request; every way it can fail becomes a ``PrometheusError``."""
        import requests
        from prometheus_api_client.exceptions import PrometheusApiClientException

        try:
            result = request(self._connect())
        except (requests.exceptions.JSONDecodeError, RecursionError):
            # RecursionError: JSON nested deeper than the interpreter's stack, unreadable.
            raise PrometheusError(
                "not_json", f"Prometheus at {self.url} answered with something that is not JSON"
            ) from None
        except requests.exceptions.RequestException as exc:
            # With retries off, urllib3 reports a read timeout inside a ConnectionError.
            if isinstance(exc, requests.exceptions.Timeout) or "timed out" in str(exc):
                raise PrometheusError(
                    "timeout",
                    f"Prometheus at {self.url}: no answer within {self.timeout_seconds:g}s",
                ) from None
            raise PrometheusError(
                "unreachable", f"Prometheus at {self.url}: cannot connect ({_cause(exc)})"
            ) from None
        except PrometheusApiClientException as exc:
            raise _http_error(self.url, query, str(exc)) from None
        except (KeyError, TypeError, ValueError):
            raise self._shape(query, "no data.result in the answer") from None
        if not isinstance(result, list):
            raise self._shape(query, "data.result is not a list")
        return result

    def _labels(self, item: object, query: str) -> dict[str, str]:
        """A series' labels: strings, as Prometheus writes them. A number or an object
        there is no label value, and made into one with str() it would be a name the
        answer never held."""
        if not isinstance(item, dict) or not isinstance(item.get("metric"), dict):
            raise self._shape(query, "a series without labels")
        labels = item["metric"]
        if not all(isinstance(value, str) for value in labels.values()):
            raise self._shape(query, "a label value that is not a string")
        return dict(labels)

    def _shape(self, query: str, what: str) -> PrometheusError:
        return PrometheusError(
            "bad_shape", f"Prometheus at {self.url}: unexpected answer to {query!r}: {what}"
        )


def _number(text: object) -> float:
    """A sample value: Prometheus sends it as a string ("1.5", "NaN", "+Inf"). Raises
    ValueError or OverflowError (an integer too large for a float) for anything else."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError(f"sample {text!r} is not a number")
    return float(text)


def _cause(exc: BaseException) -> str:
    """The innermost reason (``Connection refused``), not urllib3's nested repr."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "No route to host"):
        if marker in text:
            return marker
    return text if len(text) < 200 else text[:200] + "..."


def _http_error(url: str, query: str, text: str) -> PrometheusError:
    """Prometheus's error reply, with its own explanation when it gave one (a bad
    query is HTTP 400 with ``errorType: bad_data`` and the parser's message). The client
    puts the reply body in its message as a bytes literal: ``HTTP Status Code 400 (b'...')``."""
    status, _, rest = text.partition("(")
    kind, explanation = "http_error", ""
    try:
        body = ast.literal_eval(rest.rsplit(")", 1)[0])
        reply = json.loads(body)
        explanation = str(reply.get("error", ""))
        if reply.get("errorType") == "bad_data":
            kind = "bad_query"
    except (ValueError, SyntaxError, TypeError, AttributeError, RecursionError):
        pass  # not Prometheus's JSON (a proxy's error page): the status says enough
    detail = f": {explanation}" if explanation else ""
    return PrometheusError(
        kind, f"Prometheus at {url} refused {query!r} ({status.strip()}){detail}"
    )


def _loopback(url: str) -> bool:
    """Whether ``url`` names this machine (then compressing answers only costs CPU)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False
