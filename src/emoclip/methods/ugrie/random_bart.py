"""A BART with random weights and a word-level tokenizer built offline from emoclip's own words.

Real BART weights need the Hugging Face hub. Where it cannot be reached, this writes a folder that
``--set bart=FOLDER`` reads like a downloaded one: ``tiny`` (a few layers of width 32: tests,
smoke runs) or ``base`` (facebook/bart-base's architecture, with its 50,265-entry output layer:
timings). Its tokenizer knows the words of the UGRIE templates and of every built-in
taxonomy (names, parents, synonyms) plus any ``extra_words``; others read as ``<unk>``. Predictions
of such a model mean nothing until trained; the compute is real.

    python -m emoclip.methods.ugrie.random_bart runs/bart-tiny --size tiny
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SPECIAL = ("<s>", "<pad>", "</s>", "<unk>")  # BART's ids 0-3
# tiny: weights drawn 10× wider than BART's 0.02 and no dropout, so a one-layer model starts reading the image
# prefix within a few dozen steps (at 0.02 its cross-attention is uniform and tests would need hundreds).
TINY = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_position_embeddings": 128,
        "init_std": 0.2, "dropout": 0.0}
# facebook/bart-base's architecture (its config.json). BartConfig()'s own defaults are bart-large's (12+12
# layers, width 1024: 406 M parameters), not bart-base's.
BASE = {"d_model": 768, "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 12,
        "decoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072}
SIZES: dict[str, dict[str, Any]] = {"tiny": TINY, "base": BASE}


def emoclip_words(extra_words: Iterable[str] = ()) -> list[str]:
    """Every word the built-in templates and taxonomies can put in a task text or a sentence."""
    from emoclip.labels.taxonomy import builtin_taxonomies, load_taxonomy
    from emoclip.methods.ugrie.templates import load_templates

    templates = load_templates(None)
    texts = [*extra_words]
    for name in builtin_taxonomies():
        tax = load_taxonomy(name)
        texts += [templates.task_text(tax), *templates.sentences(tax)]
        texts += [s for c in tax.classes for s in c.synonyms]
    words = {w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())}
    return sorted(words)


def build_tokenizer(words: Iterable[str]):
    """A word-level fast tokenizer (whitespace and punctuation split, lower-cased) with BART's special ids."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(cleanup=True)  # words joined by spaces, none before punctuation
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def build_random_bart(size: str = "tiny", vocab_size: int | None = None, seed: int = 0):
    """A seeded random ``BartForConditionalGeneration`` of the given size."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    options = dict(SIZES[size])
    if vocab_size is not None:
        options["vocab_size"] = vocab_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BartForConditionalGeneration(BartConfig(**options))


def save_random_bart(folder: str | Path, size: str = "tiny", extra_words: Iterable[str] = (), seed: int = 0) -> Path:
    """Write a random BART and its offline tokenizer to ``folder`` (``--set bart=folder`` reads it)."""
    tokenizer = build_tokenizer(emoclip_words(extra_words))
    # tiny: the vocabulary is the tokenizer's; base keeps bart-base's 50,265 outputs (real compute)
    model = build_random_bart(size, len(tokenizer) if size == "tiny" else None, seed)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(save_random_bart(args.folder, args.size, seed=args.seed))


if __name__ == "__main__":
    main()
