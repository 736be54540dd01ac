"""The raw transformers baseline of ``transformers-raw``: the best hand-written batched loop, no lazyllm.

Run in a process of its own (``python benchmarks/raw_transformers.py SPEC.json RESULT.json``);
it imports only the standard library, torch and transformers. What a careful engineer
writes for greedy chat completions on one model:

- ``AutoTokenizer`` + ``AutoModelForCausalLM`` (``dtype`` of the spec, eval mode), torch's
  thread count set first; the load is timed apart;
- the tokenizer's chat template over each prompt (one user turn, generation prompt added);
- prompts sorted by token length, longest first, in batches of ``batch_size``, left
  padding (pad = end of sequence when the tokenizer has no pad token);
- ``model.generate(do_sample=False, num_beams=1, max_new_tokens=...)`` under
  ``torch.inference_mode()``, ending at the model's end-of-sequence token.

``SPEC.json``: ``model_dir``, ``prompts`` (user messages), ``max_tokens``, ``batch_size``,
``threads``, ``dtype``. ``RESULT.json``: ``load_seconds``, ``generate_seconds``,
``output_tokens`` (per row up to and including the end-of-sequence token), ``texts``
(decoded without special tokens and stripped, in input order), ``batches``.
"""

from __future__ import annotations

import sys

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path[:] = [p for p in sys.path if p not in (_HERE, "")]

import json  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402


def main() -> None:
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()  # the load, not the imports (lazyllm's side imports torch before it too)
    torch.set_num_threads(spec["threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"], local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=getattr(torch, spec["dtype"]),
                                                 local_files_only=True)
    model.eval()
    load = time.perf_counter() - start

    start = time.perf_counter()
    eos = model.generation_config.eos_token_id
    eos_ids = set([eos] if isinstance(eos, int) else eos or []) | {tokenizer.eos_token_id}
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in spec["prompts"]]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    out: list[str] = [""] * len(ids)
    tokens = 0
    size = spec["batch_size"]
    with torch.inference_mode():
        for first in range(0, len(order), size):
            rows = order[first : first + size]
            batch = tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
            generated = model.generate(**batch, do_sample=False, num_beams=1, max_new_tokens=spec["max_tokens"],
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
            width = batch["input_ids"].shape[1]
            for row, new in zip(rows, generated[:, width:].tolist()):
                end = next((k + 1 for k, t in enumerate(new) if t in eos_ids), len(new))
                tokens += end
                out[row] = tokenizer.decode(new[:end], skip_special_tokens=True).strip()
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {"load_seconds": load, "generate_seconds": seconds, "output_tokens": tokens,
                              "texts": out, "batches": -(-len(order) // size)}
    with open(sys.argv[2], "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
