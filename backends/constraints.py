"""Constrained decoding for the transformers engine, with xgrammar.

A request with ``choices`` or ``json_schema`` is decoded under a grammar: on every
step the tokens the grammar cannot accept next get a logit of ``-inf``, so greedy
decoding and seeded sampling only ever pick allowed tokens, and the text is exactly
one of the choices, or JSON that matches the schema, unless ``max_tokens`` (or a
stop string) ends the row first.

- :class:`GrammarCache` builds the ``xgrammar.TokenizerInfo`` of a loaded model once
  and compiles each constraint once: choices as an EBNF alternation of string
  literals (:func:`choices_grammar`), JSON schemas with
  ``GrammarCompiler.compile_json_schema``.
- :class:`ConstraintProcessor` is the per-batch ``LogitsProcessor``: one
  ``xgrammar.GrammarMatcher`` per constrained row, a shared token bitmask, and rows
  without a constraint left untouched.

Method and library: XGrammar (Dong et al., 2024, "XGrammar: Flexible and Efficient
Structured Generation Engine for Large Language Models"), package ``xgrammar``.

Cost (SmolLM2, 49k tokens, CPU): building the tokenizer info takes about 0.15 s per
loaded model; compiling a grammar takes a few milliseconds for choices and up to about
0.1 s for a JSON schema, once per distinct constraint; each step costs one bitmask
fill and masking pass per constrained row (about 0.3 ms, a few ms at worst), next to
tens of milliseconds for the forward pass. No extra LLM calls.

Installation: ``xgrammar`` declares ``triton`` as a dependency on Linux x86_64
(about 1 GB, used only by its CUDA kernels), so ``scripts/install.sh`` installs it
with ``--no-deps``, then its runtime dependencies ``apache-tvm-ffi`` and ``pydantic``. On CUDA without
triton the masking uses xgrammar's plain-torch kernel.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
from transformers import LogitsProcessor

from lazyllm.core.errors import MissingDependencyError
from lazyllm.core.protocols import Request

__all__ = ["ConstraintProcessor", "GrammarCache", "choices_grammar", "import_xgrammar", "is_constrained"]

_INSTALL_HINT = (
    "Constrained decoding (choices=... or json_schema=...) in the transformers engine needs the package "
    "'xgrammar', which is not installed. Install it as scripts/install.sh does: "
    "pip install --no-deps 'xgrammar==0.2.8' && pip install 'apache-tvm-ffi>=0.1.11' pydantic "
    "(--no-deps skips triton, which only its CUDA kernels use), or rerun scripts/install.sh."
)


def import_xgrammar() -> ModuleType:
    """Import and return ``xgrammar``.

    Raises
    ------
    MissingDependencyError
        xgrammar (or its runtime dependency apache-tvm-ffi) is not importable; the
        message says how ``scripts/install.sh`` installs it.
    """
    try:
        return importlib.import_module("xgrammar")
    except ImportError as exc:
        error = MissingDependencyError("xgrammar", "scripts/install.sh", "Constrained decoding")
        # xgrammar is not a pip extra (it would pull triton): give the install line instead.
        ImportError.__init__(error, f"{_INSTALL_HINT} Import error: {exc}", name="xgrammar")
        raise error from exc


def is_constrained(request: Request) -> bool:
    """Whether ``request`` carries a ``choices`` or ``json_schema`` constraint."""
    return request.choices is not None or request.json_schema is not None


def _ebnf_literal(text: str) -> str:
    """``text`` as a double-quoted EBNF string literal (xgrammar / GBNF escapes)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)  # other characters, non-ASCII included, stand for their UTF-8 bytes
    return '"' + "".join(out) + '"'


def choices_grammar(choices: Sequence[str]) -> str:
    r"""An EBNF grammar whose language is exactly ``choices``.

    Parameters
    ----------
    choices : sequence of str
        The allowed answers, matched byte for byte (no surrounding whitespace added).

    Returns
    -------
    str
        ``root ::= "a" | "b" | ...`` with quotes, backslashes and control characters escaped.

    Raises
    ------
    ValueError
        ``choices`` is empty.

    Examples
    --------
    >>> print(choices_grammar(["yes", 'He said "hi"', "a\\b\n"]))
    root ::= "yes" | "He said \"hi\"" | "a\\b\x0a"
    """
    if not choices:
        raise ValueError("choices is empty: give at least one allowed answer.")
    return "root ::= " + " | ".join(_ebnf_literal(c) for c in choices)


class GrammarCache:
    """Compiles constraints for one loaded model and keeps every compiled grammar.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        The model's tokenizer (its vocabulary decides which tokens spell which bytes).
    vocab_size : int
        The width of the model's logits (``config.vocab_size``), which may exceed
        ``len(tokenizer)``; the extra ids are never allowed.
    stop_token_ids : sequence of int
        The end-of-sequence ids of the engine: a grammar ends by accepting one of them.

    Notes
    -----
    Cost: about 0.15 s to build the tokenizer info (49k tokens); milliseconds (choices)
    to about 0.1 s (JSON schema) per distinct constraint, compiled once (``grammars``
    maps a constraint to its compiled grammar).
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        self.xgr = import_xgrammar()
        self.tokenizer_info = self.xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_token_ids) or None
        )
        threads = max(1, min(8, torch.get_num_threads()))
        self.compiler = self.xgr.GrammarCompiler(self.tokenizer_info, max_threads=threads)
        self.grammars: dict[tuple[str, Any], Any] = {}  # constraint -> compiled grammar or ValueError

    @property
    def vocab_size(self) -> int:
        return self.tokenizer_info.vocab_size

    def compile(self, request: Request) -> Any:
        """The compiled grammar of ``request``'s constraint (cached), or None without one.

        Raises
        ------
        ValueError
            Both constraints are set, ``choices`` is empty, or the JSON schema is not
            valid JSON or is not supported by xgrammar (the message says which).
        """
        if request.choices is not None and request.json_schema is not None:
            raise ValueError("the request sets both choices and json_schema; set one of them.")
        if request.choices is not None:
            key: tuple[str, Any] = ("choices", tuple(request.choices))
        elif request.json_schema is not None:
            key = ("json_schema", request.json_schema)
        else:
            return None
        if key not in self.grammars:
            try:
                self.grammars[key] = self._compile(*key)
            except ValueError as exc:  # kept too: a bad constraint shared by many rows fails once
                self.grammars[key] = exc
        grammar = self.grammars[key]
        if isinstance(grammar, ValueError):
            raise grammar
        return grammar

    def _compile(self, kind: str, value: Any) -> Any:
        if kind == "choices":
            try:
                return self.compiler.compile_grammar(choices_grammar(value))
            except RuntimeError as exc:  # pragma: no cover - escaped literals always parse
                raise ValueError(f"the choices could not be compiled to a grammar: {exc}") from exc
        try:
            json.loads(value)
        except ValueError as exc:
            raise ValueError(f"json_schema is not valid JSON: {exc}") from None
        try:
            # one line, ", " and ": " separators: compact, and the layout models see most
            return self.compiler.compile_json_schema(value, any_whitespace=False)
        except (RuntimeError, ValueError, TypeError) as exc:
            reason = re.sub(r"^\[[\d:]+\] \S+: ", "", str(exc).strip())  # drop the C++ log prefix
            raise ValueError(f"xgrammar cannot compile the json_schema: {reason}.") from exc


class ConstraintProcessor(LogitsProcessor):
    """Masks the logits of constrained rows to the tokens their grammar allows next.

    Parameters
    ----------
    grammars : sequence of compiled grammar or None
        One entry per batch row; None leaves the row untouched.
    xgr : module
        The ``xgrammar`` module (from :func:`import_xgrammar`).
    vocab_size : int
        The width of the logits the bitmask covers (the grammars' tokenizer info).
    prompt_length : int
        The padded prompt width: a call with longer ``input_ids`` follows a generated token.
    done : list of bool
        Per row, whether the row has ended (max_tokens, end of sequence, stop string);
        shared with the stopping criteria, which update it after each step. A row that
        has ended gets padding from ``generate``; its matcher is not fed any more.
    eos_token_id : int
        Forced for a row whose matcher has terminated or has rejected a token.

    Notes
    -----
    Put it before any processor that samples, so that samples are drawn from the
    allowed tokens only. On each call, for every constrained row masked on the previous
    call, the matcher accepts the token ``generate`` appended (``input_ids[:, -1]``),
    then the row's bitmask is filled and all masks are applied in place. ``violated``
    lists rows whose matcher rejected a token (not expected; such a row is ended with
    end of sequence and must be reported as an error, never as an unconstrained answer).

    Cost: per step, one ``fill_next_token_bitmask`` per live constrained row and one
    masking pass over those rows' logits.
    """

    def __init__(
        self,
        grammars: Sequence[Any],
        *,
        xgr: ModuleType,
        vocab_size: int,
        prompt_length: int,
        done: list[bool],
        eos_token_id: int,
    ) -> None:
        self.xgr = xgr
        self.matchers = [None if g is None else xgr.GrammarMatcher(g) for g in grammars]
        self.rows = [i for i, m in enumerate(self.matchers) if m is not None]
        self.bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size) if self.rows else None
        self.vocab_size = vocab_size
        self.prompt_length = prompt_length
        self.done = done
        self.eos_token_id = eos_token_id
        self.violated = [False] * len(grammars)
        self._masked: list[int] = []  # rows whose next appended token the matcher must accept

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return scores
        if input_ids.shape[1] > self.prompt_length:
            last = input_ids[:, -1].tolist()
            for row in self._masked:
                if not self.matchers[row].accept_token(last[row]):
                    self.violated[row] = True
        masked: list[int] = []
        forced: list[int] = []
        for row in self.rows:
            if self.done[row]:
                continue
            matcher = self.matchers[row]
            if self.violated[row] or matcher.is_terminated():
                forced.append(row)
            else:
                matcher.fill_next_token_bitmask(self.bitmask, row)
                masked.append(row)
        if masked:
            self._apply(scores, masked)
        if forced:
            index = torch.tensor(forced, device=scores.device)
            scores[index] = float("-inf")
            scores[index, self.eos_token_id] = 0.0
        self._masked = masked
        return scores

    def _apply(self, scores: torch.Tensor, rows: list[int]) -> None:
        width = min(scores.shape[-1], self.vocab_size)
        if scores.shape[-1] > width:  # logits for ids the tokenizer info does not cover: never allowed
            scores[torch.tensor(rows, device=scores.device), width:] = float("-inf")
        if scores.device.type == "cpu":
            self.xgr.apply_token_bitmask_inplace(scores, self.bitmask, vocab_size=width, indices=rows)
            return
        # the Triton kernel is used when triton is installed; scripts/install.sh skips it
        backend = "auto" if importlib.util.find_spec("triton") is not None else "torch_native"
        self.xgr.apply_token_bitmask_inplace(
            scores, self.bitmask.to(scores.device, non_blocking=True),
            vocab_size=width, indices=rows, backend=backend,
        )
