"""What the worker agent's HTTP API takes and returns (pydantic at the edge; `core` types inside).

- `RequestIn`: a trace request for `POST /v1/worker/requests` (the WorkerClient's `submit`), field for field
  `core.requests.Request`.
- `CompletionRequest` / `CompletionResponse` / `CompletionChunk`: the OpenAI completions API, the subset this
  engine honours. Unknown fields are rejected rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag

from core.requests import Request

_STRICT = ConfigDict(extra="forbid")


def _prompt_form(prompt: object) -> str | None:
    """Which form of prompt was sent, so that an error names that form's problem (not the other's)."""
    return "text" if isinstance(prompt, str) else "token_ids" if isinstance(prompt, list) else None


def _as_list(value: object) -> object:
    """OpenAI takes one string or a list of them."""
    return [value] if isinstance(value, str) else value


Prompt = Annotated[
    Annotated[str, Field(min_length=1), Tag("text")] | Annotated[list[int], Field(min_length=1), Tag("token_ids")],
    Discriminator(_prompt_form, custom_error_type="prompt_type",
                  custom_error_message="Input should be text or a list of token ids"),
]


class RequestIn(BaseModel):
    """A request as `core.requests.Request` (JSON form)."""

    model_config = _STRICT
    request_id: int
    arrival_s: Annotated[float, Field(allow_inf_nan=False)] = 0.0
    model: str
    slo_class: str
    prompt_tokens: Annotated[int, Field(ge=0)]
    output_tokens: Annotated[int, Field(ge=1)]
    prompt_text: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None

    def to_request(self) -> Request:
        return Request(**self.model_dump())


class CompletionRequest(BaseModel):
    """OpenAI `POST /v1/completions` body. `prompt` is text (byte-level models) or token ids."""

    model_config = _STRICT
    model: str
    prompt: Prompt
    max_tokens: Annotated[int, Field(ge=1)] = 16
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(ge=1, le=1)] = Field(default=1.0, description="Only 1.0 (no nucleus sampling).")
    n: Literal[1] = 1
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_as_list),
                    Field(min_length=1, max_length=4)] | None = Field(
        default=None, description="A string or up to 4: the completion ends before the first of them (left out of "
        "the text and of token_ids), finish_reason 'stop'. Text prompts only.")
    stream: bool = False
    seed: int | None = None
    user: str | None = None
    # Extensions (vLLM names where vLLM has one).
    ignore_eos: bool = Field(default=False, description="Generate max_tokens even past EOS.")
    slo_class: str | None = Field(default=None, description="SLO class; default: the worker's first online class.")


class Choice(BaseModel):
    index: int = 0
    text: str
    token_ids: list[int] = Field(description="Extension: the generated token ids.")
    logprobs: None = None
    finish_reason: str | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    num_preemptions: int = Field(default=0, description="Extension: times the request was preempted.")
    num_recomputed_tokens: int = Field(default=0, description="Extension: KV tokens computed again after "
                                       "preemptions (0 when resumed from a swap or checkpoint).")


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
