"""training.sequences: padding and positions against naive per-row references."""

from __future__ import annotations

import torch

from training.sequences import left_pad, position_ids


def test_left_pad_puts_every_row_at_the_right_edge():
    seqs = [[5, 6, 7], [8], [9, 10]]
    ids, mask = left_pad(seqs, pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]


def test_position_ids_count_only_real_tokens():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 1]])
    naive = []
    for row in mask.tolist():
        seen, out = 0, []
        for m in row:
            out.append(max(seen + m - 1, 0))
            seen += m
        naive.append(out)
    assert position_ids(mask).tolist() == naive
