"""The request schema of `POST /v1/chat/completions` (pydantic), and what a valid request asks the model for.

What is served is what the target answers to the request rendered by its own chat template:

- user messages only: one user turn, as `specvlm generate` builds it (the text parts joined with newlines into the
  question, the images, then the video, then the text, whatever the order of the parts), so a greedy request
  answers what `specvlm generate --prompt` prints for the same media and question.
- with system / developer (rendered as system) / assistant messages: the conversation as given, each message's parts
  in their order, images and a video in any user turn, assistant and system turns text only, the last message a
  user's (the answer follows it). Tool messages, like tools, are refused (400).
- at most one video per request.
- `logprobs` / `top_logprobs` (at most MAX_TOP_LOGPROBS): each answer token's log-probability under the target and
  its most likely alternatives, from the verifier's logits (the target's raw distribution, before temperature /
  top-p / top-k, as vLLM's default and HF's `output_logits` give), at no extra forward.
- parameters that would change the output and cannot be honoured losslessly (penalties, logit_bias, tools,
  n > 1, a JSON response_format) are refused unless they hold the value that changes nothing; unknown fields are
  refused too (nothing is silently ignored that could change the answer). Bookkeeping fields (user, metadata,
  store, ...) are accepted and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from .errors import APIError, bad_request

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_STOP_CHARS = 1000  # per stop string: what a round checks for grows with it
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
MAX_IMAGES = 16  # images per request (--max-images): each may decode to MediaLimits.image_pixels before resizing


class MediaURL(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    detail: Literal["auto", "low", "high"] | None = None  # OpenAI's resolution hint; --max-pixels decides here


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["image_url"]
    image_url: MediaURL


class VideoPart(BaseModel):  # vLLM's extension for video
    model_config = ConfigDict(extra="forbid")
    type: Literal["video_url"]
    video_url: MediaURL


Part = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]
PARTS = TypeAdapter(list[Part])


ROLES = ("system", "developer", "user", "assistant")


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. "name": it changes nothing in a single user turn
    role: str
    content: Any = None

    @field_validator("role")
    @classmethod
    def _known_role(cls, role: str) -> str:
        if role in ("tool", "function"):
            raise ValueError(f"{role} messages are not supported: specvlm serves no tools")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        return role


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # vLLM's extension; 0 or -1: off
    ignore_eos: bool = False  # vLLM's extension: always max_tokens tokens (benchmarks, tests)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # torch.Generator's range
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # accepted only at the value that changes nothing (checked by `unsupported`)
    n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict | None = None
    # bookkeeping: accepted and ignored
    user: str | None = None
    metadata: dict | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None


# field -> the values that change nothing (None is always fine: the field was not given)
NEUTRAL = {
    "n": (1,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
    "logit_bias": ({},),
    "tools": ([],),
    "tool_choice": ("none",),
    "parallel_tool_calls": (True, False),
    "response_format": ({"type": "text"},),
}


@dataclass(frozen=True)
class Media:
    url: str
    where: str  # its place in the request, e.g. "messages.0.content.1.video_url" (error messages name it)


@dataclass(frozen=True)
class Turn:
    """What a request asks: its media in order, and either one user turn (`prompt`: the question, rendered as
    `specvlm generate --prompt` renders it) or a conversation (`messages`, HF's chat format, media as placeholder
    parts; `prompt` then holds the last user text, for logs)."""

    prompt: str
    images: tuple[Media, ...]
    video: Media | None
    messages: tuple[dict, ...] | None = None


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; k: each token's log-probability and its k most likely

    def generate_options(self) -> dict:
        """The keywords `generate` takes for these settings (what `specvlm generate` passes for the same flags;
        ignore_eos: no end-of-sequence id, which HF's generate and ours both accept as an empty list)."""
        options = dict(max_new_tokens=self.max_new_tokens, do_sample=self.temperature > 0)
        if self.temperature > 0:
            options.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        if self.ignore_eos:
            options.update(eos_token_id=[])
        return options


def parse_request(body: Any) -> ChatRequest:
    """The validated request, or a 400 naming the first offending field."""
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as err:
        raise _as_api_error(err) from None
    unsupported(request)
    return request


def unsupported(request: ChatRequest) -> None:
    for name, neutral in NEUTRAL.items():
        value = getattr(request, name)
        if value is not None and value not in neutral:
            raise bad_request(
                f"{name}={value!r} is not supported: specvlm serves the target's own output "
                f"(accepted only as {' or '.join(repr(v) for v in neutral)})",
                param=name,
                code="unsupported_parameter",
            )


def chat_turn(messages: list[Message], max_images: int = MAX_IMAGES) -> Turn:
    """The request's turn. User messages only: one user turn (their texts joined with newlines, the media placed as
    `specvlm generate` places them). With system / developer / assistant messages: the conversation as given, parts
    in order, rendered by the models' chat templates (as vLLM and `transformers serve` do); media only in user
    turns, and the last message a user's."""
    texts, images, videos, turns = [], [], [], []
    for i, message in enumerate(messages):
        parts = []
        for j, part in enumerate(_parts(message.content, f"messages.{i}.content")):
            where = f"messages.{i}.content.{j}.{part.type}"
            if isinstance(part, TextPart):
                texts.append(part.text)
                parts.append({"type": "text", "text": part.text})
                continue
            if message.role != "user":
                raise bad_request(f"{message.role} messages hold text only", param=where)
            if isinstance(part, ImagePart):
                images.append(Media(part.image_url.url, where))
                parts.append({"type": "image"})
            else:
                videos.append(Media(part.video_url.url, where))
                parts.append({"type": "video"})
        turns.append({"role": "system" if message.role == "developer" else message.role, "content": parts})
    if len(videos) > 1:
        raise bad_request(
            f"{len(videos)} videos in one request: one video at most (as `specvlm generate`)", param=videos[1].where
        )
    if len(images) > max_images:
        raise bad_request(
            f"{len(images)} images in one request: {max_images} at most (--max-images)", param=images[max_images].where
        )
    if not "\n".join(texts).strip():
        raise bad_request("the request has no text: add a text part with the question or instruction", param="messages")
    video = videos[0] if videos else None
    if all(turn["role"] == "user" for turn in turns):  # every text is a user's: one user turn, as generate
        return Turn("\n".join(texts), tuple(images), video)
    if turns[-1]["role"] != "user":
        raise bad_request("the last message must be a user message: the answer follows it", param="messages")
    last = " ".join(p["text"] for p in turns[-1]["content"] if p["type"] == "text")
    return Turn(last, tuple(images), video, tuple(turns))


def _parts(content, where: str) -> list:
    if isinstance(content, str):
        return [TextPart(type="text", text=content)]
    if not isinstance(content, list):
        raise bad_request("a user message's content must be a string or a list of parts", param=where)
    try:
        return PARTS.validate_python(content)
    except ValidationError as err:
        raise _as_api_error(err, prefix=where) from None


def decoding(request: ChatRequest, defaults: Decoding) -> Decoding:
    """The request's decoding settings; what it leaves out comes from the server's own options (`defaults`)."""
    stop = request.stop
    stop = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stop) > MAX_STOP_STRINGS or any(not s or len(s) > MAX_STOP_CHARS for s in stop):
        raise bad_request(
            f"stop takes up to {MAX_STOP_STRINGS} non-empty strings of at most {MAX_STOP_CHARS} characters",
            param="stop",
        )
    if request.top_logprobs and not request.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
    given = lambda value, default: default if value is None else value
    return Decoding(
        max_new_tokens=request.max_completion_tokens or request.max_tokens or defaults.max_new_tokens,
        temperature=given(request.temperature, defaults.temperature),
        top_p=given(request.top_p, defaults.top_p),
        top_k=defaults.top_k if request.top_k is None else max(request.top_k, 0),
        seed=request.seed,
        stop=stop,
        ignore_eos=request.ignore_eos,
        logprobs=(request.top_logprobs or 0) if request.logprobs else None,
    )


def _as_api_error(err: ValidationError, prefix: str = "") -> APIError:
    first = err.errors()[0]
    where = ".".join(str(part) for part in ((prefix,) if prefix else ()) + tuple(first["loc"]))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown parameter (not part of the chat completions API this server speaks)"
    return bad_request(f"{where}: {message}" if where else message, param=where or None)
