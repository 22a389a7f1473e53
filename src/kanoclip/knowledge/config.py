"""Where knowledge is asked for: an OpenAI-compatible chat server (its flags are declared here)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from kanoclip.errors import KnowledgeError
from kanoclip.options import option


@dataclass
class ServerConfig:
    """Where to ask. Unset fields come from KANOCLIP_LLM_BASE_URL / OPENAI_BASE_URL, KANOCLIP_LLM_MODEL and
    KANOCLIP_LLM_API_KEY / OPENAI_API_KEY."""

    base_url: str | None = option(
        None,
        help="OpenAI-compatible server, e.g. http://localhost:11434/v1 (Ollama), http://localhost:8000/v1 (vLLM); "
        "env KANOCLIP_LLM_BASE_URL; default api.openai.com",
    )
    model: str | None = option(None, help="chat model name; env KANOCLIP_LLM_MODEL")
    api_key: str | None = option(None, secret=True, help="env KANOCLIP_LLM_API_KEY or OPENAI_API_KEY")
    timeout: float = option(60.0, help="seconds per request")
    retries: int = option(4, help="retries on 429, 5xx, timeouts")

    def resolved(self) -> ServerConfig:
        env = os.environ.get
        base_url = self.base_url or env("KANOCLIP_LLM_BASE_URL") or env("OPENAI_BASE_URL")
        model = self.model or env("KANOCLIP_LLM_MODEL")
        if not model:
            raise KnowledgeError(
                "no chat model named: pass --model (e.g. gpt-4o-mini, llama3.2-vision) or set KANOCLIP_LLM_MODEL"
            )
        # local servers (vLLM, Ollama) accept any key; the openai client insists on one
        api_key = self.api_key or env("KANOCLIP_LLM_API_KEY") or env("OPENAI_API_KEY") or "none"
        return ServerConfig(base_url, model, api_key, self.timeout, self.retries)
