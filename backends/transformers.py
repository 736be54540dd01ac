"""The Hugging Face transformers engine: the embedded default, runs on CPU.

:class:`TransformersEngine` runs a causal LM with ``model.generate`` in left-padded
batches. Decoding is greedy for requests with ``temperature == 0`` and seeded
sampling (temperature, top-p) for the others; both kinds can share one batch, because
the planner batches requests from different operators together.

Requests with ``logprobs`` (and ``choices``) are not decoded: one forward pass over
the prompt (and the proper prefixes of multi-token choices) gives the log-probability
of each choice (:mod:`lazyllm.backends.logprobs`), in batches of their own.

Requests with ``choices`` or ``json_schema`` are decoded under a grammar with
xgrammar (:mod:`lazyllm.backends.constraints`): the logits of their rows are masked
to the tokens the grammar allows before greedy selection or seeded sampling, so
constrained, unconstrained, greedy and sampled rows can share one batch too.

:func:`lazyllm.core.model_store.resolve_model_dir` turns the spec into a folder that
``from_pretrained`` can load offline (aliases are converted once, Hub ids downloaded);
a trained model reaches the engine as a plain spec of its weights folder.

Streaming
---------
:meth:`TransformersEngine.session` decodes with a refilling batch
(:class:`TransformersSession`): up to ``batch_size`` rows decode together, and when a
row ends its slot is given to the next submitted request at once (its prompt is
prefilled and its key/value cache joins the batch's, left-padded), so a long answer
holds back no other request and a request submitted while others decode starts at the
next step. Per-row decoding is the same as in ``generate`` (greedy argmax, or the
row's seeded draw; ``max_tokens``, end of sequence and stop strings). Requests with a
``choices`` / ``json_schema`` constraint, ``logprobs`` or ``reward``, and models whose
key/value cache is not a plain dynamic cache (sliding-window layers), run through
``generate`` in batches of their own between decoding steps.

The running batch's key/value cache keeps spare room after its last token
(:class:`_GrowingLayer`): a decoding step writes its token's keys and values in place,
where transformers' ``DynamicLayer`` concatenates, copying the whole cache at every step
(on 2 CPU cores, 64 rows of about 250 tokens: more than the model's matrix products).

Determinism
-----------
A sampled row draws its tokens from its own ``torch.Generator`` seeded with
:meth:`Request.seed` (the base seed and the sample index), so the same request gives
the same text whatever the other requests of its batch are, as long as its logits do
not change. They do change a little: the padding and the batch size change the shapes
of the matrix products, hence the rounding.

- float32: logits move by about 5e-5; seeded samples matched in every measured case
  (8 prompts x 2 seeds, temperature 0.8, 32 tokens, alone vs in a batch of 8).
- bfloat16 on CPU: logits move by up to about 0.5, so seeded samples usually differ
  between batch compositions (15 of 16 in the same measurement), and greedy outputs
  can differ at near ties. Use ``dtype="float32"`` where a rerun must reproduce
  samples that were not cached.
"""

from __future__ import annotations

import copy
import gc
import inspect
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    DynamicLayer,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from lazyllm.core.catalog import alias_source
from .constraints import ConstraintProcessor, GrammarCache, import_xgrammar, is_constrained
from lazyllm.core.errors import EngineError
from .logprobs import choice_logprobs, prefix_paths
from lazyllm.core.model_store import existing_model_dir, resolve_model_dir
from lazyllm.core.protocols import Request, Response
from .reasoning import split_response
from lazyllm.core.system import env_threads
from lazyllm.core.specs import Transformers

__all__ = ["TransformersEngine", "TransformersSession"]

_DTYPES: dict[str, Any] = {
    "auto": "auto",
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# Files a model folder needs besides the weights (tokenizer, configs, chat template).
_CONFIG_PATTERNS = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_SOURCE_FILE = ".lazyllm-source.json"


# --------------------------------------------------------------------------- decoding


class _PerRowSampling(LogitsProcessor):
    """Seeded temperature + top-p sampling for some rows of a batch, greedy for the rest.

    For a sampled row the processor draws the next token itself, with the row's own
    ``torch.Generator`` (CPU, seeded with :meth:`Request.seed`), and sets every other
    logit to ``-inf``, so the greedy ``argmax`` of ``generate`` picks it. The draw is
    inverse-CDF sampling: over the whole vocabulary in token-id order when
    ``top_p == 1``; otherwise over the nucleus (the most probable tokens whose mass
    reaches ``top_p``), found among the 512 most probable tokens (``torch.topk``) or,
    when those do not reach ``top_p``, a full stable sort. Probabilities are float32.
    Rows with temperature 0 are left untouched (greedy). Exactly one uniform number is
    drawn per sampled row per step, so a row's text does not depend on its batch.
    Cost: well under a millisecond per sampled row per step on a 49k vocabulary.
    """

    TOP_K = 512

    def __init__(self, requests: Sequence[Request]) -> None:
        self.rows = [i for i, r in enumerate(requests) if r.params.temperature > 0]
        self.temperature = [requests[i].params.temperature for i in self.rows]
        self.top_p = [requests[i].params.top_p for i in self.rows]
        self.generators = [torch.Generator(device="cpu").manual_seed(requests[i].seed()) for i in self.rows]

    def _draw(self, probs: torch.Tensor, top_p: float, generator: torch.Generator) -> int:
        u = float(torch.rand(1, generator=generator, dtype=torch.float64))
        if top_p >= 1.0:
            cdf = probs.cumsum(0)
            pick = int(torch.searchsorted(cdf, torch.tensor([u * float(cdf[-1])]), right=True))
            return min(pick, probs.shape[0] - 1)
        top, order = torch.topk(probs, min(self.TOP_K, probs.shape[0]))
        cumulative = top.cumsum(0)
        if float(cumulative[-1]) < top_p:  # the nucleus is wider than the top 512
            top, order = torch.sort(probs, descending=True, stable=True)
            cumulative = top.cumsum(0)
        n = int(((cumulative - top) < top_p).sum())  # a prefix, never empty
        cdf = cumulative[:n]
        pick = int(torch.searchsorted(cdf, torch.tensor([u * float(cdf[-1])]), right=True))
        return int(order[min(pick, n - 1)])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return scores
        rows = torch.tensor(self.rows, device=scores.device)
        logits = scores.index_select(0, rows).to("cpu", torch.float32)
        tokens = []
        for j in range(len(self.rows)):
            probs = torch.softmax(logits[j] / self.temperature[j], dim=-1)
            tokens.append(self._draw(probs, self.top_p[j], self.generators[j]))
        chosen = torch.tensor(tokens, device=scores.device)[:, None]
        forced = torch.full((len(self.rows), scores.shape[1]), float("-inf"), dtype=scores.dtype, device=scores.device)
        forced.scatter_(1, chosen, 0.0)
        scores = scores.clone()
        scores[rows] = forced
        return scores


class _PerRowStop(StoppingCriteria):
    """Per-row ``max_tokens`` and stop strings; returns a bool tensor, one entry per row.

    Stop strings are searched in the decoded generated text of rows that have any, on
    every step until the row is done (cost: one ``tokenizer.decode`` of the generated
    tokens per such row and step).
    """

    def __init__(self, requests: Sequence[Request], prompt_length: int, tokenizer: Any, eos_ids: set[int]) -> None:
        self.prompt_length = prompt_length
        self.max_tokens = [r.params.max_tokens for r in requests]
        self.stops = [r.params.stop for r in requests]
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.done = [False] * len(requests)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_length :]
        n = generated.shape[1]
        last = generated[:, -1].tolist() if n else [None] * len(self.done)
        for i, stops in enumerate(self.stops):
            if self.done[i]:
                continue
            if n >= self.max_tokens[i] or last[i] in self.eos_ids:
                self.done[i] = True
            elif stops:
                text = self.tokenizer.decode(generated[i], skip_special_tokens=True)
                self.done[i] = any(s in text for s in stops)
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


@dataclass(slots=True)
class _Prepared:
    index: int
    request: Request
    ids: list[int]
    grammar: Any = None  # the compiled grammar of a constrained request


@dataclass(slots=True)
class _Slot:
    """A row of the refilling decoder: its request, the tokens generated so far, its generator."""

    ticket: int
    prepared: _Prepared
    tokens: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None


class _Unsupported(Exception):
    """The model's key/value cache cannot be refilled row by row (not plain dynamic layers)."""


class _RefillDecoder:
    """Continuous batching over transformers' ``DynamicCache``: one forward pass per step for
    every running row; finished rows leave, waiting rows are prefilled and join (see the
    module's "Streaming")."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine = engine
        self.size = max(1, int(engine.spec.batch_size))
        self.waiting: deque[tuple[int, _Prepared]] = deque()
        self.slots: list[_Slot] = []
        self.cache: Any = None  # DynamicCache of the running rows, left-padded to one length
        self.mask: torch.Tensor | None = None  # (rows, length) 1 for real tokens
        self.sampler = _PerRowSampling([])
        self.cache_arg: str | None = None  # the forward's name of the cache argument (set once loaded)

    @property
    def busy(self) -> bool:
        return bool(self.slots or self.waiting)

    def reset(self) -> list[_Slot]:
        slots, self.slots, self.cache, self.mask = self.slots, [], None, None
        return slots

    def step(self) -> list[tuple[int, Response]]:
        """Admit waiting rows into free slots, then decode one token for every running row;
        the rows that finished."""
        done: list[tuple[int, Response]] = []
        free = self.size - len(self.slots)
        if free > 0 and self.waiting:
            done += self._admit([self.waiting.popleft() for _ in range(min(free, len(self.waiting)))])
        if not self.slots:
            return done
        engine = self.engine
        assert self.mask is not None
        rows = len(self.slots)
        feed = torch.tensor([[slot.tokens[-1]] for slot in self.slots], dtype=torch.long)
        position = self.mask.sum(-1, keepdim=True)  # real tokens so far: the position of the fed token
        mask = torch.cat([self.mask, torch.ones((rows, 1), dtype=torch.long)], dim=1)
        device = engine._device
        if self.cache_arg is None:  # transformers 5.2x renamed the forward's past_key_values to cache
            self.cache_arg = "cache" if "cache" in inspect.signature(engine._model.forward).parameters \
                else "past_key_values"
        with torch.inference_mode():
            out = engine._model(input_ids=feed.to(device), attention_mask=mask.to(device),
                                position_ids=position.to(device), use_cache=True,
                                **{self.cache_arg: _growing(self.cache)})
        self.mask = mask
        self.cache = _cache_of(out)
        done += self._choose(out.logits[:, -1, :], self.slots)
        return done

    #: Joining rows are prefilled in groups of at most this many rows of similar prompt length
    #: (sorted), so a short prompt is not padded to the longest of a large admission.
    PREFILL_GROUP = 8

    def _admit(self, new: list[tuple[int, _Prepared]]) -> list[tuple[int, Response]]:
        """Prefill new rows (sorted by prompt length, left-padded per group of
        :attr:`PREFILL_GROUP`), choose their first token, and merge the cache of those still
        running into the batch's."""
        new = sorted(new, key=lambda item: len(item[1].ids))
        groups = [new[i : i + self.PREFILL_GROUP] for i in range(0, len(new), self.PREFILL_GROUP)]
        try:
            parts = [self._prefill(group) for group in groups]
        except _Unsupported:
            self.waiting.extendleft(reversed(new))  # they go through generate() instead
            raise
        logits = torch.cat([part[0] for part in parts], dim=0)
        cache, mask = _stack([part[1] for part in parts], [part[2] for part in parts])
        slots = []
        for ticket, p in new:
            sampled = p.request.params.temperature > 0
            slots.append(_Slot(ticket, p, generator=torch.Generator(device="cpu").manual_seed(p.request.seed())
                               if sampled else None))
        done = self._choose(logits, slots, cache=cache, mask=mask)
        return done

    def _prefill(self, group: list[tuple[int, _Prepared]]) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """One left-padded forward pass over ``group``'s prompts: the last position's logits
        ``(rows, vocab)``, the key/value cache and the attention mask ``(rows, width)``."""
        engine = self.engine
        width = max(len(p.ids) for _, p in group)
        input_ids = torch.full((len(group), width), engine._pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, (_, p) in enumerate(group):
            input_ids[row, width - len(p.ids):] = torch.tensor(p.ids, dtype=torch.long)
            mask[row, width - len(p.ids):] = 1
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        device = engine._device
        with torch.inference_mode():
            out = engine._model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                position_ids=position.to(device), use_cache=True, logits_to_keep=1)
        cache = _cache_of(out)
        if any(type(layer) is not DynamicLayer for layer in getattr(cache, "layers", [None])):
            raise _Unsupported
        return out.logits[:, -1, :], cache, mask

    def _choose(self, logits: torch.Tensor, slots: list[_Slot], *, cache: Any = None,
                mask: torch.Tensor | None = None) -> list[tuple[int, Response]]:
        """Pick each row's next token (greedy argmax, or its seeded draw as ``generate`` does), end
        the rows that are done, and keep the others (new rows: merged from ``cache``/``mask``)."""
        engine = self.engine
        scores = logits.float().cpu()
        greedy = scores.argmax(dim=-1).tolist()
        done: list[tuple[int, Response]] = []
        keep: list[int] = []
        for row, slot in enumerate(slots):
            params = slot.prepared.request.params
            if slot.generator is not None:
                probs = torch.softmax(scores[row] / params.temperature, dim=-1)
                token = self.sampler._draw(probs, params.top_p, slot.generator)
            else:
                token = int(greedy[row])
            slot.tokens.append(token)
            if self._finished(slot):
                done.append((slot.ticket, engine._response(slot.prepared, slot.tokens)))
            else:
                keep.append(row)
        if cache is None:  # running rows: drop the finished ones
            if len(keep) < len(slots):
                self.slots = [slots[row] for row in keep]
                if not self.slots:
                    self.reset()
                    return done
                self.cache.batch_select_indices(torch.tensor(keep, device=engine._device))
                self.mask = self.mask[keep]
                self._trim()
            return done
        if not keep:
            return done
        if len(keep) < len(slots):
            cache.batch_select_indices(torch.tensor(keep, device=engine._device))
            mask = mask[keep]
        new = [slots[row] for row in keep]
        if self.cache is None:
            self.cache, self.mask, self.slots = cache, mask, new
        else:
            assert self.mask is not None and mask is not None
            self.cache, self.mask = _stack([self.cache, cache], [self.mask, mask])
            self.slots = self.slots + new
        return done

    def _finished(self, slot: _Slot) -> bool:
        """As ``_PerRowStop``: ``max_tokens`` reached, end of sequence, or a stop string in the text."""
        params = slot.prepared.request.params
        if len(slot.tokens) >= params.max_tokens or slot.tokens[-1] in self.engine._eos_ids:
            return True
        if params.stop:
            text = self.engine._tokenizer.decode(slot.tokens, skip_special_tokens=True)
            return any(s in text for s in params.stop)
        return False

    def _trim(self) -> None:
        """Drop the leading columns that are padding in every running row."""
        assert self.mask is not None
        lead = int(self.mask.argmax(dim=1).min())  # first real token of the row that starts earliest
        if lead > 0:
            self.mask = self.mask[:, lead:]
            for layer in self.cache.layers:
                layer.keys = layer.keys[..., lead:, :]
                layer.values = layer.values[..., lead:, :]


class _GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in buffers with spare room on the token
    axis: :meth:`update` writes the new tokens in place and returns views, and the buffers
    grow by a quarter (at least :attr:`ROOM` tokens) when full, so a decoding step costs no
    copy of the cache. Assigning ``keys``/``values`` (merging, trimming) replaces the buffer."""

    ROOM = 64

    def __init__(self, layer: DynamicLayer) -> None:
        super().__init__()
        self.device, self.is_initialized = layer.keys.device, True
        self.keys, self.values = layer.keys, layer.values

    @property
    def keys(self) -> Any:
        return None if self._keys is None else self._keys[..., : self._length, :]

    @keys.setter
    def keys(self, value: Any) -> None:
        self._keys = value
        self._length = 0 if value is None else value.shape[-2]

    @property
    def values(self) -> Any:
        return None if self._values is None else self._values[..., : self._values_length, :]

    @values.setter
    def values(self, value: Any) -> None:
        self._values = value
        self._values_length = 0 if value is None else value.shape[-2]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self._length, self._length + key_states.shape[-2]
        assert self._values_length == start, "keys and values were given different lengths"
        if end > self._keys.shape[-2]:
            room = max(self.ROOM, end // 4)
            self._keys, self._values = (torch.nn.functional.pad(x[..., :start, :], (0, 0, 0, end - start + room))
                                        for x in (self._keys, self._values))
        self._keys[..., start:end, :] = key_states
        self._values[..., start:end, :] = value_states
        self._length = self._values_length = end
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys, self._values = self._keys[indices, ...], self._values[indices, ...]


def _growing(cache: Any) -> Any:
    """``cache`` with its layers as :class:`_GrowingLayer` (in place; the cache). Layers that
    hold nothing (a model whose layers share another's cache) stay as they are."""
    cache.layers = [layer if isinstance(layer, _GrowingLayer) or not layer.is_initialized else _GrowingLayer(layer)
                    for layer in cache.layers]
    return cache


def _cache_of(out: Any) -> Any:
    """The key/value cache of a forward pass's output (``cache``, formerly ``past_key_values``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _stack(caches: list[Any], masks: list[torch.Tensor]) -> tuple[Any, torch.Tensor]:
    """Key/value caches and attention masks of row groups as one left-padded batch (rows in
    order): every layer's keys and values, and the masks, padded at the front to the widest
    and concatenated over rows into the first cache."""
    if len(caches) == 1:
        return caches[0], masks[0]
    width = max(mask.shape[1] for mask in masks)
    for layer, *others in zip(caches[0].layers, *(cache.layers for cache in caches[1:]), strict=True):
        layer.keys = torch.cat([_left_pad(x.keys, width) for x in (layer, *others)], dim=0)
        layer.values = torch.cat([_left_pad(x.values, width) for x in (layer, *others)], dim=0)
    return caches[0], torch.cat([_left_pad_mask(mask, width) for mask in masks], dim=0)


def _left_pad(kv: torch.Tensor, length: int) -> torch.Tensor:
    """Keys or values ``(rows, heads, tokens, dim)`` padded with zeros at the front to ``length`` tokens."""
    return torch.nn.functional.pad(kv, (0, 0, length - kv.shape[-2], 0))


def _left_pad_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(mask, (length - mask.shape[1], 0))


class TransformersSession:
    """Requests streamed into a :class:`TransformersEngine`: a refilling decoding batch.

    See the module's "Streaming". :meth:`poll` runs engine work in this thread: one
    decoding step (plus the prefill of rows that join), or one batch of the requests
    that go through ``generate`` (constrained, ``logprobs``, ``reward``), and returns
    what finished.

    Parameters
    ----------
    engine : TransformersEngine

    Attributes
    ----------
    capacity : int
        Twice ``spec.batch_size``: a finished row's slot is refilled at the next step
        from the requests waiting here.

    Notes
    -----
    Cost: one forward pass per step over the running rows (at most ``batch_size``) and
    one prefill per group of joining rows; a row's text is the one ``generate`` gives
    up to float rounding of the different batch shapes (see "Determinism").
    """

    continuous = True

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine = engine
        self.capacity = 2 * max(1, int(engine.spec.batch_size))
        self._next = 0
        self._ready: list[tuple[int, Response]] = []
        self._batched: list[tuple[int, Request]] = []  # through generate()
        self._decoder = _RefillDecoder(engine)
        self._refill = True  # False once the model's cache proved unsupported

    def submit(self, requests: Sequence[Request]) -> list[int]:
        """Queue ``requests`` (prompts are encoded now); their tickets.

        Parameters
        ----------
        requests : sequence of Request

        Returns
        -------
        list of int

        Raises
        ------
        ModelNotFoundError, MissingDependencyError, EngineError
            The model cannot be loaded (the first submission loads it).
        """
        engine = self.engine
        tickets = list(range(self._next, self._next + len(requests)))
        self._next += len(requests)
        plain = [(t, r) for t, r in zip(tickets, requests)
                 if self._refill and not (r.reward or r.logprobs or is_constrained(r))]
        taken = {t for t, _ in plain}
        self._batched += [(t, r) for t, r in zip(tickets, requests) if t not in taken]
        if plain:
            engine.load()
        for ticket, request in plain:
            try:
                ids = engine._encode(request)
            except Exception as exc:
                self._ready.append((ticket, Response.failed(f"Could not build the prompt: {type(exc).__name__}: {exc}")))
                continue
            self._decoder.waiting.append((ticket, _Prepared(ticket, request, ids)))
        return tickets

    def poll(self, timeout: float | None = None) -> list[tuple[int, Response]]:
        """Run engine work until something finishes (one step at a time); what finished.

        Parameters
        ----------
        timeout : float, optional
            Unused: each call runs at least one step when anything is queued.

        Returns
        -------
        list of (int, Response)
        """
        decoder = self._decoder
        while True:
            if self._ready:
                out, self._ready = self._ready, []
                return out
            size = self.engine.spec.batch_size
            if self._batched and (not decoder.busy or len(self._batched) >= size):
                chunk, self._batched = self._batched[:size], self._batched[size:]
                self._ready += [(chunk[i][0], r) for part in self.engine.generate([r for _, r in chunk])
                                for i, r in part]
                continue
            if not decoder.busy:
                return []
            try:
                self._ready += decoder.step()
            except _Unsupported:  # the rest through generate()
                self._refill = False
                running = [(slot.ticket, slot.prepared.request) for slot in decoder.reset()]
                waiting = [(t, p.request) for t, p in decoder.waiting]
                decoder.waiting.clear()
                self._batched = running + waiting + self._batched
            except Exception as exc:  # the running rows fail together, as a failed batch does
                message = f"The batch failed in transformers: {type(exc).__name__}: {exc}"
                self._ready += [(slot.ticket, Response.failed(message)) for slot in decoder.reset()]

    def close(self) -> None:
        """Forget the requests not finished (the engine stays loaded)."""
        self._decoder.reset()
        self._decoder.waiting.clear()
        self._batched, self._ready = [], []



# --------------------------------------------------------------------------- engine


class TransformersEngine:
    """Run a causal LM with Hugging Face transformers (CPU or CUDA).

    Parameters
    ----------
    spec : lazyllm.core.specs.Transformers
        The model and its options (dtype, chat template, device, batch size, threads).
    workspace : pathlib.Path
        The lazyllm workspace (converted aliases are kept in ``workspace/models/``).

    Notes
    -----
    Construction is free: the model is loaded by the first :meth:`generate` call (or
    :meth:`load`) and released by :meth:`close`. Loading the converted default model
    takes about 2 s on CPU (about 20 s more the first time, to convert the GGUF).

    Cost: one forward pass per generated token per batch of ``spec.batch_size``
    requests; a batch runs until its longest request ends, so requests are sorted by
    prompt length first. Prompt-processing cost grows with the prompt length.

    Examples
    --------
    >>> from pathlib import Path
    >>> from lazyllm.models import Transformers
    >>> from lazyllm.core.protocols import Message, Request, SamplingParams
    >>> engine = TransformersEngine(Transformers(), workspace=Path(".lazyllm"))
    >>> request = Request(messages=(Message("user", "What is the capital of France?"),),
    ...                   params=SamplingParams(max_tokens=16))
    >>> [(i, r.text)] = [pair for batch in engine.generate([request]) for pair in batch]  # doctest: +SKIP
    >>> "Paris" in r.text  # doctest: +SKIP
    True
    >>> engine.close()
    """

    def __init__(self, spec: Transformers, *, workspace: Path) -> None:
        self.spec = spec
        self.workspace = Path(workspace)
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos_ids: set[int] = set()
        self._pad_id: int | None = None
        self._device: torch.device | None = None
        self._grammars: GrammarCache | None = None  # built on the first constrained request
        self._reward: tuple[Any, Any, Any] | None = None  # (model, tokenizer, device) for reward requests

    # -- lifecycle

    @property
    def model(self) -> Any:
        """The loaded ``PreTrainedModel``, or None before the first load and after close()."""
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The loaded tokenizer, or None before the first load and after close()."""
        return self._tokenizer

    @classmethod
    def token_counter(cls, spec: Transformers, *, workspace: Path) -> Any:
        """A prompt-token counter (chat template applied) from the model's tokenizer, when
        the model folder is already here (no conversion, no download, no weights); else None.
        Used by ``explain()`` estimates. Cost: loading a tokenizer (well under a second)."""
        folder = existing_model_dir(spec, workspace)
        if folder is None:
            return None
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        use_template = bool(spec.chat_template and getattr(tokenizer, "chat_template", None))

        def count(messages: Sequence[Any]) -> int:
            if use_template:
                chat = [{"role": m.role, "content": m.content} for m in messages]
                text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                return len(tokenizer(text, add_special_tokens=False)["input_ids"])
            return len(tokenizer("\n\n".join(m.content for m in messages))["input_ids"])

        return count

    def load(self) -> None:
        """Load the tokenizer and the model (no-op when loaded).

        Raises
        ------
        ModelNotFoundError
            The model cannot be found locally nor downloaded (the message says how to fix).
        MissingDependencyError
            The package that ships an alias's weights is not installed.
        EngineError
            The folder exists but transformers cannot load it (the cause is chained).
        """
        if self._model is not None:
            return
        spec = self.spec
        _apply_threads(spec)
        folder = resolve_model_dir(spec, self.workspace)
        converted = alias_source(spec.model) is not None
        gguf_file = None if converted else spec.gguf_file  # an alias is converted into an HF folder
        device = _pick_device(spec.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=gguf_file, dtype=_DTYPES[spec.dtype], local_files_only=True
            )
            model.to(device)
        except Exception as exc:
            raise EngineError(
                f"transformers could not load the model {spec.model!r} from {folder} on {device}: "
                f"{type(exc).__name__}: {exc}. Check that the folder holds config.json, the tokenizer and "
                "the weights (or pass gguf_file=...), and that dtype and device are supported here."
            ) from exc
        model.eval()
        tokenizer.padding_side = "left"
        eos_ids: set[int] = set()
        for value in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
            if value is not None:
                eos_ids.update([value] if isinstance(value, int) else value)
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise EngineError(
                    f"The tokenizer of {spec.model!r} has neither a pad nor an end-of-sequence token, "
                    "so batches cannot be padded. Use a model whose tokenizer defines eos_token."
                )
            tokenizer.pad_token = tokenizer.eos_token
        # The engine decides decoding itself: drop the model's sampling defaults
        # (temperature, top_p, repetition_penalty, suppress_tokens, ...).
        model.generation_config = GenerationConfig(
            bos_token_id=model.generation_config.bos_token_id,
            eos_token_id=sorted(eos_ids) or None,
            pad_token_id=tokenizer.pad_token_id,
        )
        self._model, self._tokenizer = model, tokenizer
        self._eos_ids, self._pad_id, self._device = eos_ids, tokenizer.pad_token_id, device

    def close(self) -> None:
        """Release the model and the tokenizer (and the CUDA cache); the engine can load again."""
        self._model = None
        self._tokenizer = None
        self._grammars = None
        self._reward = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> TransformersEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- generation

    def generate(self, requests: Sequence[Request]) -> Iterator[list[tuple[int, Response]]]:
        """Run ``requests``; yield each engine batch of ``(index, Response)`` as it finishes.

        Parameters
        ----------
        requests : sequence of Request
            Chat messages or raw prompts with their sampling params; greedy and
            sampled requests, different ``max_tokens`` and stop strings may be mixed.

        Yields
        ------
        list of (int, Response)
            One list per batch of at most ``spec.batch_size`` requests (index into
            ``requests``). Prompts that cannot be built and constraints that cannot
            be compiled (an empty ``choices``, a JSON schema xgrammar does not
            support) come first as error responses. Every index is yielded exactly once.

        Raises
        ------
        ModelNotFoundError, MissingDependencyError, EngineError
            The model cannot be loaded (raised by the first ``next()``). A failure
            inside one batch yields error responses for that batch and goes on.
        MissingDependencyError
            Some request has a constraint and xgrammar is not installed (raised by
            the first ``next()``, before the model is loaded).

        Notes
        -----
        Responses: ``text`` decoded without special tokens, cut before the first stop
        string and stripped; ``input_tokens`` the prompt tokens (no padding);
        ``output_tokens`` the generated tokens up to and including the end-of-sequence
        token or the token that completed a stop string, at most ``max_tokens``;
        ``finish_reason`` ``"stop"`` or ``"length"``.

        Constrained rows (``choices``, ``json_schema``): the text is exactly one of
        the choices, or one-line JSON that matches the schema, when the row ends with
        end of sequence (``"stop"``); it is not stripped. When ``max_tokens`` ends the
        row first, the text is the partial answer with ``"length"`` (a stop string
        cuts it as usual, with ``"stop"``). Cost: no extra LLM calls; each distinct
        constraint is compiled once per loaded model (milliseconds for choices, up to
        about 0.1 s for a JSON schema, plus about 0.15 s once for the tokenizer's
        tables), then one bitmask fill (about 0.3 ms) per constrained row and step.
        """
        if not requests:
            return
        rewards = [(i, r) for i, r in enumerate(requests) if r.reward]
        if rewards:
            yield from self._rewards(rewards)
            if len(rewards) == len(requests):
                return
        if any(is_constrained(r) for r in requests):
            import_xgrammar()  # a missing package fails before the model is loaded
        self.load()

        prepared: list[_Prepared] = []
        scored: list[_Prepared] = []
        failed: list[tuple[int, Response]] = []
        for i, request in enumerate(requests):
            if request.reward:
                continue
            try:
                ids = self._encode(request)
            except Exception as exc:
                failed.append((i, Response.failed(f"Could not build the prompt: {type(exc).__name__}: {exc}")))
                continue
            if request.logprobs:  # a prefill over the choices' tokens, no decoding: no grammar needed
                scored.append(_Prepared(i, request, ids))
                continue
            try:
                grammar = self._grammar(request)
            except ValueError as exc:
                kind = "choices" if request.choices is not None else "json_schema"
                failed.append((i, Response.failed(f"The {kind} constraint cannot be enforced: {exc} "
                                         "Fix the constraint (a non-empty choices list, or a JSON schema "
                                         "xgrammar supports).")))
                continue
            prepared.append(_Prepared(i, request, ids, grammar))
        if failed:
            yield failed
        yield from self._in_batches(scored, self._score_batch, "log-probability batch")
        yield from self._in_batches(prepared, self._run_batch, "batch")

    def session(self) -> TransformersSession:
        """A streaming session: a decoding batch whose finished rows are refilled at once
        (see the module's "Streaming"). Loads the model at the first submission.

        Returns
        -------
        TransformersSession
        """
        return TransformersSession(self)

    def _in_batches(self, items: list[_Prepared], run: Any, what: str) -> Iterator[list[tuple[int, Response]]]:
        """Run ``items`` longest prompt first, ``spec.batch_size`` at a time; a batch that raises
        becomes error responses for its rows."""
        items.sort(key=lambda p: len(p.ids), reverse=True)
        size = self.spec.batch_size
        for start in range(0, len(items), size):
            batch = items[start : start + size]
            try:
                responses = run(batch)
            except Exception as exc:
                message = f"The {what} failed in transformers: {type(exc).__name__}: {exc}"
                responses = [Response.failed(message) for _ in batch]
            yield [(p.index, r) for p, r in zip(batch, responses, strict=True)]

    def _encode(self, request: Request) -> list[int]:
        """Prompt token ids: the chat template when it applies, else the raw text."""
        tokenizer = self._tokenizer
        if request.messages and self.spec.chat_template and getattr(tokenizer, "chat_template", None):
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            text = request.prompt if request.prompt is not None else "\n\n".join(m.content for m in request.messages)
            ids = tokenizer(text)["input_ids"]
        if not ids:
            if tokenizer.bos_token_id is None:
                raise ValueError("the prompt is empty and the tokenizer has no beginning-of-sequence token")
            ids = [tokenizer.bos_token_id]
        return list(ids)

    def _grammar(self, request: Request) -> Any:
        """The compiled grammar of the request's constraint (None without one); raises ValueError."""
        if not is_constrained(request):
            return None
        if self._grammars is None:
            config = self._model.config
            vocab_size = getattr(config.get_text_config(), "vocab_size", None) or len(self._tokenizer)
            self._grammars = GrammarCache(self._tokenizer, vocab_size, self._eos_ids)
        return self._grammars.compile(request)

    # -- reward models

    def load_reward(self) -> None:
        """Load the spec's model as a sequence-classification reward model (one output label).

        A folder or hub id loads as is and must have one label. A trained
        :class:`~lazyllm.RewardModel` handle reaches the engine as its merged folder
        (base, LoRA adapter and score head; the planner resolves it before any engine
        sees it).

        Raises
        ------
        EngineError
            The model cannot be loaded as a sequence classifier, or it has more than
            one output label.
        """
        if self._reward is not None:
            return
        from transformers import AutoModelForSequenceClassification

        spec = self.spec
        _apply_threads(spec)
        device = _pick_device(spec.device)
        try:
            folder = resolve_model_dir(spec, self.workspace)
            model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=_DTYPES[spec.dtype],
                                                                       local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"transformers could not load {spec.display_name} as a reward model "
                              f"(AutoModelForSequenceClassification): {type(exc).__name__}: {exc}.") from exc
        if model.config.num_labels != 1:
            raise EngineError(f"{spec.display_name} has {model.config.num_labels} output labels; a reward model "
                              "has one (a scalar score). Use a reward model, or train one with RewardModel.")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
        model.to(device).eval()
        self._reward = (model, tokenizer, device)

    def _rewards(self, indexed: Sequence[tuple[int, Request]]) -> Iterator[list[tuple[int, Response]]]:
        """Score reward requests in right-padded batches of ``spec.batch_size`` (one forward pass each)."""
        self.load_reward()
        model, tokenizer, device = self._reward  # type: ignore[misc]
        encoded: list[tuple[int, list[int]]] = []
        failed: list[tuple[int, Response]] = []
        for i, request in indexed:
            try:
                if request.messages and getattr(tokenizer, "chat_template", None):
                    chat = [{"role": m.role, "content": m.content} for m in request.messages]
                    text = tokenizer.apply_chat_template(chat, tokenize=False)
                    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                else:
                    ids = tokenizer(request.prompt if request.prompt is not None
                                    else "\n\n".join(m.content for m in request.messages))["input_ids"]
                encoded.append((i, list(ids)))
            except Exception as exc:
                failed.append((i, Response.failed(f"Could not build the reward model's input: {type(exc).__name__}: {exc}")))
        if failed:
            yield failed
        encoded.sort(key=lambda e: len(e[1]), reverse=True)
        size = self.spec.batch_size
        for start in range(0, len(encoded), size):
            batch = encoded[start : start + size]
            try:
                width = max(len(ids) for _, ids in batch)
                input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, (_, ids) in enumerate(batch):
                    input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                    mask[row, : len(ids)] = 1
                with torch.inference_mode():
                    logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
                scores = logits[:, 0].float().cpu().tolist()
                yield [(i, Response(text=repr(float(v)), input_tokens=len(ids), output_tokens=0, score=float(v)))
                       for (i, ids), v in zip(batch, scores, strict=True)]
            except Exception as exc:
                yield [(i, Response.failed(f"The reward batch failed in transformers: {type(exc).__name__}: {exc}"))
                       for i, _ in batch]

    def _choice_ids(self, choice: str) -> tuple[int, ...]:
        ids = tuple(self._tokenizer(choice, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError(f"the choice {choice!r} encodes to no tokens")
        return ids

    #: A shared prompt prefix shorter than this is not worth a separate forward pass.
    MIN_SHARED_PREFIX = 16
    #: Scored sequences go through the model sorted by length, this many at a time.
    SCORE_GROUP = 8

    def _last_logits(self, sequences: Sequence[list[int]], keep: int) -> torch.Tensor:
        """Logits at the last ``keep`` positions of each sequence, shape ``(len(sequences), keep, vocab)``.

        When the sequences share a token prefix of at least :attr:`MIN_SHARED_PREFIX`
        tokens (a chat template's system turn: the judges' long instructions), the
        prefix goes through the model once, its key/value cache is repeated over the
        batch, and only the suffixes (left-padded after it) are computed: the prompt
        tokens processed fall by the shared part times the batch size less one
        (prefix caching, as vLLM's automatic prefix caching does across requests).
        The suffixes go through the model sorted by length, :attr:`SCORE_GROUP` at a time,
        so a short one is not padded to the longest of the batch.
        Numerics: the prefix's keys and values come from a batch of one, so logits can
        move by float rounding (about 1e-5 in float32), as with any change of batch shape.
        """
        shortest = min(len(ids) for ids in sequences)
        shared = 0
        first = sequences[0]
        limit = shortest - keep  # every kept position stays in the suffix
        while shared < limit and all(ids[shared] == first[shared] for ids in sequences):
            shared += 1
        device = self._device
        prefix = None
        if len(sequences) > 1 and shared >= self.MIN_SHARED_PREFIX:
            with torch.inference_mode():
                prefix = self._model(input_ids=torch.tensor([first[:shared]], dtype=torch.long, device=device),
                                     use_cache=True).past_key_values
        else:
            shared = 0
        # suffixes sorted by length, a group at a time: a short one is not padded to the longest of the batch
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        logits: list[torch.Tensor | None] = [None] * len(sequences)
        for start in range(0, len(order), self.SCORE_GROUP):
            group = order[start : start + self.SCORE_GROUP]
            past = None
            if prefix is not None:
                past = copy.deepcopy(prefix)
                past.batch_repeat_interleave(len(group))
            suffixes = [sequences[i][shared:] for i in group]
            width = max(len(ids) for ids in suffixes)
            input_ids = torch.full((len(suffixes), width), self._pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(suffixes), shared + width), dtype=torch.long)
            attention_mask[:, :shared] = 1
            for row, ids in enumerate(suffixes):  # left padding (between the shared prefix and the suffix)
                input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, shared + width - len(ids):] = 1
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
            with torch.inference_mode():
                out = self._model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                  position_ids=position_ids.to(device), past_key_values=past,
                                  logits_to_keep=keep, use_cache=past is not None)
            for row, i in enumerate(group):
                logits[i] = out.logits[row, -keep:, :]
        return torch.stack(logits)  # type: ignore[arg-type]

    def _score_batch(self, batch: Sequence[_Prepared]) -> list[Response]:
        """Log-probabilities of each request's choices (``Request.logprobs``), one prefill per sequence.

        Each request becomes one sequence per path of :func:`~lazyllm.backends.logprobs.prefix_paths`
        (the prompt alone when every choice is one token; prompt + ``1`` for the
        scores 1-10 on a digit-splitting tokenizer), prefilled by :meth:`_last_logits`;
        only the last ``longest path + 1`` positions go through the LM head. The
        next-token log-softmax at those positions gives every choice's log-probability
        (:func:`~lazyllm.backends.logprobs.choice_logprobs`). Text: the most probable choice.
        """
        seqs: list[tuple[int, tuple[int, ...], list[int]]] = []
        per_request: list[list[tuple[int, ...]]] = []
        for b, p in enumerate(batch):
            choices = [self._choice_ids(c) for c in p.request.choices or ()]
            per_request.append(choices)
            for path in prefix_paths(choices) or [()]:
                seqs.append((b, path, p.ids + list(path)))
        keep = max(len(path) for _, path, _ in seqs) + 1
        logits = self._last_logits([ids for _, _, ids in seqs], keep)
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        where: list[dict[tuple[int, ...], tuple[int, int]]] = [{} for _ in batch]
        for row, (b, path, _) in enumerate(seqs):
            for j in range(len(path) + 1):  # the distribution after prompt + path[:j]
                where[b].setdefault(tuple(path[:j]), (row, keep - 1 - (len(path) - j)))
        responses = []
        for b, p in enumerate(batch):
            table = where[b]

            def next_logprob(prefix: tuple[int, ...], token: int, table: dict = table) -> float:
                row, pos = table[prefix]
                return float(logp[row, pos, token])

            lps = tuple(choice_logprobs(per_request[b], next_logprob))
            choices = p.request.choices or ()
            best = max(range(len(choices)), key=lambda i: (lps[i], -i))
            responses.append(Response(text=choices[best], input_tokens=len(p.ids), output_tokens=0,
                                      finish_reason="stop", choice_logprobs=lps))
        return responses

    def _run_batch(self, batch: Sequence[_Prepared]) -> list[Response]:
        requests = [p.request for p in batch]
        width = max(len(p.ids) for p in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, p in enumerate(batch):  # left padding
            input_ids[row, width - len(p.ids) :] = torch.tensor(p.ids, dtype=torch.long)
            attention_mask[row, width - len(p.ids) :] = 1
        config = GenerationConfig(
            do_sample=False,
            num_beams=1,
            max_new_tokens=max(r.params.max_tokens for r in requests),
            pad_token_id=self._pad_id,
            eos_token_id=sorted(self._eos_ids) or None,
        )
        stop = _PerRowStop(requests, width, self._tokenizer, self._eos_ids)
        processors: list[LogitsProcessor] = []
        constraint = None
        if any(p.grammar is not None for p in batch):
            assert self._grammars is not None
            # before the sampling processor: sampled rows draw from the allowed tokens only
            constraint = ConstraintProcessor(
                [p.grammar for p in batch], xgr=self._grammars.xgr, vocab_size=self._grammars.vocab_size,
                prompt_length=width, done=stop.done, eos_token_id=min(self._eos_ids, default=self._pad_id),
            )
            processors.append(constraint)
        processors.append(_PerRowSampling(requests))
        with torch.inference_mode():
            output = self._model.generate(
                input_ids=input_ids.to(self._device),
                attention_mask=attention_mask.to(self._device),
                generation_config=config,
                logits_processor=LogitsProcessorList(processors),
                stopping_criteria=StoppingCriteriaList([stop]),
            )
        generated = output[:, width:].cpu().tolist()
        responses = []
        for row, (p, tokens) in enumerate(zip(batch, generated, strict=True)):
            if constraint is not None and constraint.violated[row]:  # not expected: never unconstrained text
                responses.append(Response.failed("The constrained decoding rejected a generated token (xgrammar). "
                                        "Report this with the request; rerunning the request may help."))
            else:
                responses.append(self._response(p, tokens))
        return responses

    def _response(self, prepared: _Prepared, tokens: list[int]) -> Response:
        """One row's response (:meth:`_cut`), with a ``<think>`` trace moved to ``reasoning``
        (its tokens counted with the tokenizer)."""
        return split_response(self._cut(prepared, tokens), prepared.request,
                              count=lambda t: len(self._tokenizer.encode(t, add_special_tokens=False)))

    def _cut(self, prepared: _Prepared, tokens: list[int]) -> Response:
        """Cut one row's generated tokens at max_tokens, a stop string or end-of-sequence.

        Unconstrained text is stripped; constrained text is kept as generated (a choice
        may have surrounding spaces) and decoded without clean-up of spaces.
        """
        params = prepared.request.params
        tokens = tokens[: params.max_tokens]
        eos_at = next((k for k, t in enumerate(tokens) if t in self._eos_ids), None)
        body = tokens if eos_at is None else tokens[:eos_at]
        constrained = prepared.grammar is not None
        options = {"skip_special_tokens": True, **({"clean_up_tokenization_spaces": False} if constrained else {})}

        def decode(ids: list[int]) -> str:
            return self._tokenizer.decode(ids, **options)

        def finish(text: str) -> str:
            return text if constrained else text.strip()

        text = decode(body)
        cut = min((pos for pos in (text.find(s) for s in params.stop) if pos >= 0), default=None)
        if cut is not None:
            # the shortest prefix of tokens whose text holds a stop string
            used = next(k for k in range(1, len(body) + 1)
                        if any(s in decode(body[:k]) for s in params.stop))
            return Response(text=finish(text[:cut]), input_tokens=len(prepared.ids), output_tokens=used,
                            finish_reason="stop")
        if eos_at is not None:
            return Response(text=finish(text), input_tokens=len(prepared.ids), output_tokens=eos_at + 1,
                            finish_reason="stop")
        return Response(text=finish(text), input_tokens=len(prepared.ids), output_tokens=len(tokens),
                        finish_reason="length")


def _apply_threads(spec: Any) -> None:
    """Set torch's CPU thread count from ``spec.num_threads`` or ``LAZYLLM_NUM_THREADS`` (if either is set)."""
    threads = spec.num_threads or env_threads()
    if threads:
        torch.set_num_threads(threads)


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise EngineError(f"device {device!r} is not a torch device. Use 'cpu', 'cuda', 'cuda:1' or 'auto'.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} was requested but CUDA is not available on this machine. "
                          "Use device='cpu' or device='auto'.")
    return resolved
