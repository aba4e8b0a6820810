"""Naive per-concept reference of C2LIP's pooling and losses, written independently of the library.

Everything is a Python loop over concepts and images, the way the authors' release computes the pooled vectors
(one attention per concept, the pooled vector `z` materialised, normalised with `F.normalize`).
"""

import torch
import torch.nn.functional as F


def naive_pooled_scores(concepts, tokens, tau):
    """(N, D), (M, T, D) -> (N, M): <normalize(sum_t softmax(tau <u_t, c>) u_t), c>, one pair at a time."""
    rows = []
    for c in concepts:
        row = []
        for image in tokens:
            weights = torch.softmax(tau * (image @ c), dim=0)
            pooled = F.normalize((weights[:, None] * image).sum(0), dim=0, eps=1e-8)
            row.append(pooled @ c)
        rows.append(torch.stack(row))
    return torch.stack(rows)


def naive_positives(image_index, num_images, ids, mode):
    positives = torch.zeros(len(image_index), num_images, dtype=torch.bool)
    for n in range(len(image_index)):
        for m in range(num_images):
            if mode == "owner":
                positives[n, m] = int(image_index[n]) == m
            else:
                positives[n, m] = any(
                    int(image_index[k]) == m and int(ids[k]) == int(ids[n]) for k in range(len(image_index))
                )
    return positives


def naive_sigmoid_sum(logits, positives):
    total = 0.0
    for n in range(logits.shape[0]):
        for m in range(logits.shape[1]):
            sign = 1.0 if positives[n, m] else -1.0
            total = total - F.logsigmoid(sign * logits[n, m])
    return total


def naive_multi_positive_ce(logits, positives):
    """Mean over rows with a positive of -sum_j (1/|P|) log softmax_j."""
    losses = []
    for row, pos in zip(logits, positives):
        if not pos.any():
            continue
        log_probs = torch.log_softmax(row, dim=0)
        losses.append(-sum(log_probs[j] for j in range(len(row)) if pos[j]) / int(pos.sum()))
    return torch.stack(losses).mean()


def naive_c2lip_loss(image, text, concepts, tokens, index, ids, scale, bias, form, mode, tau, npc_w, xac_w):
    """Returns (total, caption, npc, xac) on a single process."""
    num_images = image.shape[0]
    eye = torch.eye(num_images, dtype=torch.bool)
    if form == "sigmoid":
        caption = naive_sigmoid_sum(scale * text @ image.T + bias, eye) / num_images
    else:
        logits = scale * image @ text.T
        caption = (
            F.cross_entropy(logits, torch.arange(num_images)) + F.cross_entropy(logits.T, torch.arange(num_images))
        ) / 2
    positives = naive_positives(index, num_images, ids, mode)
    npc_scores = torch.stack([torch.stack([c @ i for i in image]) for c in concepts])
    xac_scores = naive_pooled_scores(concepts, tokens, tau)

    def concept_loss(scores):
        if form == "sigmoid":
            return naive_sigmoid_sum(scale * scores + bias, positives) / len(concepts)
        logits = scale * scores
        return (naive_multi_positive_ce(logits, positives) + naive_multi_positive_ce(logits.T, positives.T)) / 2

    npc, xac = concept_loss(npc_scores), concept_loss(xac_scores)
    return caption + npc_w * npc + xac_w * xac, caption, npc, xac
