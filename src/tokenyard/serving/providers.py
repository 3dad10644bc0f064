"""HTTP client for external OpenAI-compatible providers, used by the router's backends.

One pooled ``httpx.AsyncClient`` per router replica; API keys come from the environment
variables the operator fills from Secrets (``contract.api_key_env``) and are never logged
or put in exceptions.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from tokenyard.contract import ExternalEndpoint


class ProviderError(Exception):
    """A provider answered with an error status or could not be reached."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        timeout: bool = False,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.timeout = timeout
        self.body = body
        self.retry_after = retry_after


@dataclass
class ProviderResponse:
    """A non-streaming provider answer."""

    body: dict[str, Any]


def _retry_after(headers: Mapping[str, str]) -> float | None:
    v = headers.get("retry-after")
    if v is None:
        return None
    try:
        return float(v)
    except ValueError:
        return None


class ProviderClient:
    """Calls external providers; one instance per router replica (connection pooling)."""

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 512,
    ) -> None:
        self._env = env if env is not None else os.environ
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
        )
        self._client = httpx.AsyncClient(
            transport=transport, limits=limits, timeout=httpx.Timeout(60.0)
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def _headers(self, ep: ExternalEndpoint) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if ep.apiKeyEnv:
            key = self._env.get(ep.apiKeyEnv)
            if key:
                headers["authorization"] = f"Bearer {key}"
        return headers

    @staticmethod
    def _url(ep: ExternalEndpoint, kind: str) -> str:
        path = "chat/completions" if kind == "chat" else "completions"
        return f"{ep.baseURL.rstrip('/')}/{path}"

    @staticmethod
    def _body(ep: ExternalEndpoint, body: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(body)
        out["model"] = ep.providerModel
        return out

    async def _raise_for(self, resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        raw = await resp.aread()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = None
        message = f"provider answered HTTP {resp.status_code}"
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            message += f": {parsed['error'].get('message', '')}"[:500]
        raise ProviderError(
            message,
            status=resp.status_code,
            body=parsed,
            retry_after=_retry_after(resp.headers),
        )

    async def complete(
        self, ep: ExternalEndpoint, kind: str, body: Mapping[str, Any], attempt_timeout: float
    ) -> ProviderResponse:
        """One non-streaming call; raises :class:`ProviderError` on any failure."""
        try:
            resp = await self._client.post(
                self._url(ep, kind),
                json=self._body(ep, body),
                headers=self._headers(ep),
                timeout=min(attempt_timeout, ep.timeoutSeconds),
            )
        except httpx.TimeoutException as exc:
            raise ProviderError("provider timed out", timeout=True) from exc
        except httpx.HTTPError as exc:
            # The exception text may carry the URL but never the headers (no key leak).
            raise ProviderError(f"provider unreachable: {type(exc).__name__}") from exc
        await self._raise_for(resp)
        try:
            data = resp.json()
        except ValueError as exc:
            raise ProviderError("provider sent invalid JSON", status=502) from exc
        if not isinstance(data, dict):
            raise ProviderError("provider sent a non-object JSON body", status=502)
        return ProviderResponse(body=data)

    async def stream(
        self, ep: ExternalEndpoint, kind: str, body: Mapping[str, Any], attempt_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        """Server-sent events as parsed JSON chunks, ending before ``[DONE]``.

        Errors before the first chunk raise :class:`ProviderError` from the first
        ``__anext__``, so the caller can still fall back.
        """
        request = self._client.build_request(
            "POST",
            self._url(ep, kind),
            json=self._body(ep, body),
            headers=self._headers(ep),
            timeout=min(attempt_timeout, ep.timeoutSeconds),
        )
        try:
            resp = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise ProviderError("provider timed out", timeout=True) from exc
        except httpx.HTTPError as exc:
            raise ProviderError(f"provider unreachable: {type(exc).__name__}") from exc
        try:
            await self._raise_for(resp)
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError as exc:
                    raise ProviderError("provider sent an invalid SSE chunk", status=502) from exc
                if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                    err = chunk["error"] if isinstance(chunk["error"], dict) else {}
                    code = err.get("code")
                    raise ProviderError(
                        f"provider stream error: {err.get('message', '')}"[:500],
                        status=code if isinstance(code, int) and 400 <= code < 600 else 502,
                    )
                yield chunk
        except httpx.TimeoutException as exc:
            raise ProviderError("provider timed out", timeout=True) from exc
        except httpx.HTTPError as exc:
            raise ProviderError(f"provider stream broke: {type(exc).__name__}") from exc
        finally:
            await resp.aclose()
