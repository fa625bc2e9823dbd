"""The two objectives. `kd`: forward KL(teacher || student) over the teacher's top-k
tokens plus one bucket for the rest of the vocabulary (a proper distribution on k+1
outcomes, so the loss is >= 0 and exactly 0 when the student matches the teacher there).
`ce`: plain next-token cross entropy on the same tokens, the baseline."""

from __future__ import annotations

TAIL_FLOOR = 1e-6


def kd_loss(logits, top_ids, top_logp):
    # logits: [T, V] student (positions predicting tokens 1..T); top_ids, top_logp: [T, k]
    import torch

    logq = torch.log_softmax(logits.float(), -1)
    logq_top = logq.gather(-1, top_ids.long())  # [T, k]
    p_top = top_logp.exp()
    p_tail = (1 - p_top.sum(-1)).clamp_min(TAIL_FLOOR)  # [T]
    q_tail = (1 - logq_top.exp().sum(-1)).clamp_min(TAIL_FLOOR)
    kl = (p_top * (top_logp - logq_top)).sum(-1) + p_tail * (p_tail.log() - q_tail.log())
    return kl.mean()


def ce_loss(logits, targets):
    # logits: [T, V]; targets: [T] next tokens
    import torch

    return torch.nn.functional.cross_entropy(logits.float(), targets)
