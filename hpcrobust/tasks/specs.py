"""The file-backed tasks: each one's instructions and label words, worded exactly as the reference's datasets
(robust_llm/rllm_datasets/generation_scripts/upload_{enron_spam,imdb,helpful_harmless}.py); the answer prompt
is "\\n\\nAnswer:" for all. A new file task is one entry here; its records come from task.path or task.dataset
(files.py)."""

from __future__ import annotations


def _hh(kind: str) -> str:
    return ("You will be given two conversations below between a user called Human and a conversational AI called"
            " Assistant. Your task is to determine in which of the two conversations is Assistant more"
            f" {kind}. If Assistant performs better in the first conversation, return FIRST. If Assistant"
            " performs better in the second conversation, return SECOND. \n\n")


SPECS: dict[str, tuple[str, tuple[str, str]]] = {
    "spam": ("You will be given an email below. Your task is determine whether the email is spam or not. If the"
             " review is spam, return SPAM. If the review is not spam, return HAM.\n\n", (" HAM", " SPAM")),
    "imdb": ("You will be given a review below to classify based on its sentiment. The review will be either"
             " positive or negative. If the review is positive, return POSITIVE. If the review is negative, return"
             " NEGATIVE.\n\n", (" NEGATIVE", " POSITIVE")),
    "helpful": (_hh("helpful"), (" FIRST", " SECOND")),
    "harmless": (_hh("harmless"), (" FIRST", " SECOND")),
}
