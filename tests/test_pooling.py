"""Last-token pooling for left and right padding, with the real (right-padding) tokenizer."""

from __future__ import annotations

import torch

from coinlib.core.pooling import last_token_index, last_token_pool

TEXTS = ["Is this review positive?\n\n### Response:\npositive", "Short one", "A third, medium length text"]


def test_last_token_index_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]


def test_pool_picks_hidden_state_of_last_real_token():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    pooled = last_token_pool(hidden, mask)
    assert torch.equal(pooled, torch.stack([hidden[0, 1], hidden[1, 3]]))


def _pooled(model, tok, side: str) -> torch.Tensor:
    tok.padding_side = side
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    return last_token_pool(out.hidden_states[-1], batch["attention_mask"])


def test_real_tokenizer_pads_right_and_both_sides_pool_the_same(tiny_model, smol_tokenizer):
    assert smol_tokenizer.padding_side == "right"
    tiny_model.eval()
    try:
        right = _pooled(tiny_model, smol_tokenizer, "right")
        left = _pooled(tiny_model, smol_tokenizer, "left")
    finally:
        smol_tokenizer.padding_side = "right"
    singles = []
    for text in TEXTS:  # unpadded reference: the final position of each text alone
        ids = smol_tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            singles.append(tiny_model(**ids, output_hidden_states=True).hidden_states[-1][0, -1])
    singles = torch.stack(singles)
    assert torch.allclose(right, singles, atol=1e-4)
    assert torch.allclose(left, singles, atol=1e-4)


def test_final_hidden_state_is_after_the_final_norm(tiny_model, smol_tokenizer):
    """hidden_states[-1] is what the LM head reads (normed), the representation the paper pools."""
    ids = smol_tokenizer(TEXTS[:1], return_tensors="pt")
    with torch.no_grad():
        out = tiny_model(**ids, output_hidden_states=True)
    assert torch.allclose(tiny_model.lm_head(out.hidden_states[-1]), out.logits, atol=1e-4)
