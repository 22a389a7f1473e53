"""A chat-completions client for any OpenAI-compatible server (OpenAI, vLLM, Ollama), with bounded retries.

Transport faults (HTTP 429, 5xx, timeouts, dropped connections) are retried by the `openai` SDK itself, with its
exponential backoff and jitter, honouring the server's Retry-After; other 4xx (a wrong key, an unknown model) fail at
once with the server's message. Our own loop only asks again when an answer arrives but is unusable.
"""

from __future__ import annotations

import base64

import openai

from kanoclip.errors import KnowledgeError
from kanoclip.knowledge.config import ServerConfig

RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)
MALFORMED = (openai.APIResponseValidationError, ValueError, AttributeError, TypeError)


class ChatClient:
    def __init__(self, server: ServerConfig) -> None:
        self.server = server.resolved()
        self.model: str = self.server.model or ""
        self._client = openai.OpenAI(
            base_url=self.server.base_url,
            api_key=self.server.api_key,
            timeout=self.server.timeout,
            max_retries=self.server.retries,
        )

    def ask(self, prompt: str, image: bytes | None = None, mime: str = "image/png") -> str:
        """One question (with an inline image for VQA); the answer's text, retried on transient failures."""
        content: str | list[dict[str, object]] = prompt
        if image is not None:
            url = f"data:{mime};base64,{base64.b64encode(image).decode()}"
            content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]
        last = "no attempt made"
        for _ in range(self.server.retries + 1):
            try:
                response = self._client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "user", "content": content}],  # type: ignore[misc,list-item]
                )
                text = response.choices[0].message.content if response.choices else None
            except openai.APITimeoutError as e:  # the SDK has retried it already
                raise AnswerFailed(f"{_describe(e)}, after {self.server.retries + 1} attempts") from e
            except openai.APIConnectionError as e:
                where = self.server.base_url or "api.openai.com"
                raise ServerUnreachable(f"{_describe(e)} (base URL {where}); check --base-url") from e
            except RETRYABLE as e:
                raise AnswerFailed(f"{_describe(e)}, after {self.server.retries + 1} attempts") from e
            except openai.APIStatusError as e:
                raise KnowledgeError(f"the chat server refused the request: {_describe(e)}") from e
            except MALFORMED as e:
                last = f"malformed answer ({e})"
                continue
            if text and text.strip():
                return text.strip()
            last = "empty answer"
        raise AnswerFailed(f"{last}, after {self.server.retries + 1} attempts")


class AnswerFailed(KnowledgeError):
    """One question got no usable answer; generation records it and goes on."""


class ServerUnreachable(KnowledgeError):
    """The server cannot be reached at all; generation stops (what is done stays in the cache)."""


def _describe(error: Exception) -> str:
    if isinstance(error, openai.APITimeoutError):
        return "timed out"
    if isinstance(error, openai.APIConnectionError):
        return f"cannot connect ({error.__cause__ or error})"
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {error.message}"
    return str(error)
