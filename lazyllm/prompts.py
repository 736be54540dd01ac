"""Built-in prompts of the LLM operators (Jinja2 templates), each overridable.

The judge prompts are adapted from MT-Bench (Zheng et al. 2023, "Judging LLM-as-a-
Judge with MT-Bench and Chatbot Arena", NeurIPS Datasets and Benchmarks; the
``single-v1``, ``single-ref-v1`` and ``pair-v2`` prompts of FastChat's
``llm_judge/data/judge_prompts.jsonl``). Their final-answer format is replaced by a
constrained answer (a score, or a verdict letter), so the model can only answer
validly.

Template variables: ``question``, ``answer``, ``reference`` (single grading) and
``question``, ``answer_a``, ``answer_b`` (pairwise). The operators map them to your
columns (``judge(..., question="q", answer="a")``).
"""

from __future__ import annotations

__all__ = [
    "JUDGE_SYSTEM",
    "JUDGE_PROMPT",
    "JUDGE_REFERENCE_PROMPT",
    "PAIRWISE_SYSTEM",
    "PAIRWISE_PROMPT",
    "FILTER_SYSTEM",
]

JUDGE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Your evaluation should consider factors such as the "
    "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Be as "
    "objective as possible. Rate the response with a single integer from {lo} to {hi}, where {hi} is best."
)

JUDGE_PROMPT = (
    "[Question]\n{{ question }}\n\n"
    "[The Start of Assistant's Answer]\n{{ answer }}\n[The End of Assistant's Answer]"
)

JUDGE_REFERENCE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Your evaluation should consider correctness and "
    "helpfulness. You will be given a reference answer and the assistant's answer. Compare the assistant's "
    "answer with the reference answer; identify and penalise mistakes. Be as objective as possible. Rate "
    "the response with a single integer from {lo} to {hi}, where {hi} is best."
)

JUDGE_REFERENCE_PROMPT = (
    "[Question]\n{{ question }}\n\n"
    "[The Start of Reference Answer]\n{{ reference }}\n[The End of Reference Answer]\n\n"
    "[The Start of Assistant's Answer]\n{{ answer }}\n[The End of Assistant's Answer]"
)

PAIRWISE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. You should choose the assistant that follows the "
    "user's instructions and answers the user's question better. Your evaluation should consider factors "
    "such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of their "
    "responses. Avoid any position biases and ensure that the order in which the responses were presented "
    "does not influence your decision. Do not allow the length of the responses to influence your "
    "evaluation. Do not favor certain names of the assistants. Be as objective as possible. Output your "
    'final verdict: "A" if assistant A is better, "B" if assistant B is better, and "C" for a tie.'
)

PAIRWISE_PROMPT = (
    "[User Question]\n{{ question }}\n\n"
    "[The Start of Assistant A's Answer]\n{{ answer_a }}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{{ answer_b }}\n[The End of Assistant B's Answer]"
)

FILTER_SYSTEM = "Answer the user's question about the text with yes or no."
