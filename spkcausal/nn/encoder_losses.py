"""Extra loss terms that act on the encoder, sample to sample (docs/causal.md, "Methods that act on the encoder").

Each is a registry option (`encoder_loss.name`) whose module `SpeakerNet` calls after the head, on the embeddings
of the batch; the training step adds `weight` times its value to the classification loss (as OLTR's centroid
term). Every speaker weighs alike in them: a term per anchor, whatever its speaker's count.

Pairing inside a batch needs no RNG: the items of one label in batch order g_0 .. g_{n-1} (the order is the
sampler's, already random) pair cyclically, g_a with g_{a+1}, ..., g_{a+k} (mod n). With the episodic sampler
(`sampler.name: episodic`, P speakers x K items) every item has K - 1 same-speaker partners.

- `prototypical`, the angular prototypical loss (Chung et al., Interspeech 2020, "In defence of metric learning
  for speaker recognition"): per speaker with n >= 2 items in the batch, the query is its first item and the
  centroid c of its support set the mean of the others; S_ij = w cos(q_i, c_j) + b with a learnable scale w
  (clamped >= 1e-6) and bias b initialised 10 and -5; loss = CE(S, diag) over the speakers.
- `semi_siamese`, semi-siamese training (Du et al., ECCV 2020, "Semi-Siamese Training for Shallow Face
  Learning"): a momentum copy xi of the extractor theta, xi <- m xi + (1 - m) theta before every step's forward
  (m = 0.999; floating buffers such as BatchNorm statistics alike), embeds the batch in eval mode without
  gradients; the positive of an item is the momentum embedding of its next same-speaker item (itself when it is
  alone), the negatives a FIFO queue of the last N momentum embeddings (of all ranks), minus those of its own
  speaker; loss = CE of s [cos(q, k+) - m_a, cos(q, queue_j)...] with additive margin m_a = 0.35 at scale s = 32.
- `kpositive`, the k-positive supervised contrastive loss (Kang et al., ICLR 2021, "Exploring balanced feature
  spaces for representation learning"): each anchor with at least k same-speaker partners in the batch takes
  exactly its k next partners P_i as positives; with s_ij = cos(v_i, v_j) / tau,
  L_i = -1/k sum_{p in P_i} log(exp(s_ip) / sum_{a in P_i or label_a != label_i} exp(s_ia)),
  so the other same-speaker items are neither positives nor negatives; the loss is the mean over anchors.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Annotated, Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry
from ..schema import AtLeast1, NonNegative, Positive, Range

ENCODER_LOSSES: Registry[type[nn.Module]] = Registry("encoder_loss")
NONE = "none"


def label_groups(labels: Tensor) -> list[Tensor]:
    """Positions of each label in the batch, in batch order; labels in order of first appearance."""
    lab = labels.tolist()
    first: dict[int, list[int]] = {}
    for i, y in enumerate(lab):
        first.setdefault(y, []).append(i)
    return [torch.tensor(v, dtype=torch.long, device=labels.device) for v in first.values()]


def cyclic_partners(labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(anchors (A,), partners (A, k)): every item with >= k same-label partners and its next k of them
    (cyclically, in batch order)."""
    anchors, partners = [], []
    for g in label_groups(labels):
        n = len(g)
        if n <= k:
            continue
        idx = (torch.arange(n).unsqueeze(1) + torch.arange(1, k + 1).unsqueeze(0)) % n
        anchors.append(g)
        partners.append(g[idx.to(g.device)])
    if not anchors:
        empty = torch.empty(0, dtype=torch.long, device=labels.device)
        return empty, empty.view(0, k)
    return torch.cat(anchors), torch.cat(partners)


def _fp32(x: Tensor) -> Any:
    """A context without autocast on x's device: the losses' cosines and log-sum-exps in float32 (under bf16
    autocast a contrastive logsumexp at temperature 0.1 loses most of its digits)."""
    return torch.autocast(x.device.type, enabled=False)


class EncoderLoss(nn.Module):
    """Base: `weight` x term(embeddings, labels[, feats, extractor]); `last` keeps the unweighted term."""

    def __init__(self, weight: NonNegative = 1.0):
        super().__init__()
        self.weight = float(weight)
        self.last: Tensor | None = None

    def prepare(self, extractor: nn.Module) -> None:
        """Called by SpeakerNet before the extractor's forward of a training batch (nothing by default)."""

    def forward(self, emb: Tensor, labels: Tensor, feats: Tensor, extractor: nn.Module) -> Tensor:
        """The weighted term of a training batch."""
        value = self.term(emb.float(), labels, feats, extractor)
        self.last = value.detach()
        return self.weight * value

    def term(self, emb: Tensor, labels: Tensor, feats: Tensor, extractor: nn.Module) -> Tensor:  # pragma: no cover
        """The unweighted loss term."""
        raise NotImplementedError


def angular_prototypical(emb: Tensor, labels: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """CE over speakers of w cos(query_i, centroid_j) + b (module docstring); 0 (with grad) with < 2 speakers."""
    groups = [g for g in label_groups(labels) if len(g) >= 2]
    if len(groups) < 2:
        return emb.sum() * 0.0 + (w + b) * 0.0
    with _fp32(emb):
        query = torch.stack([emb[g[0]] for g in groups])
        centroid = torch.stack([emb[g[1:]].mean(0) for g in groups])
        cos = F.normalize(query, dim=1) @ F.normalize(centroid, dim=1).T
        logits = w.clamp_min(1e-6) * cos + b
        return F.cross_entropy(logits, torch.arange(len(groups), device=emb.device))


@ENCODER_LOSSES.register("prototypical")
class AngularPrototypical(EncoderLoss):
    """Angular prototypical loss with learnable scale and bias (Chung et al. 2020)."""

    def __init__(self, weight: NonNegative = 1.0, init_scale: float = 10.0, init_bias: float = -5.0):
        super().__init__(weight)
        self.w = nn.Parameter(torch.tensor(float(init_scale)))
        self.b = nn.Parameter(torch.tensor(float(init_bias)))

    def term(self, emb: Tensor, labels: Tensor, feats: Tensor, extractor: nn.Module) -> Tensor:
        """The angular prototypical loss of the batch."""
        return angular_prototypical(emb, labels, self.w, self.b)


def kpositive_contrastive(emb: Tensor, labels: Tensor, k: int, temperature: float) -> Tensor:
    """The k-positive contrastive loss (module docstring); 0 (with grad) when no anchor has k partners."""
    anchors, pos = cyclic_partners(labels, k)
    if len(anchors) == 0:
        return emb.sum() * 0.0
    with _fp32(emb):
        v = F.normalize(emb, dim=1)
        s = (v[anchors] @ v.T) / temperature  # (A, B)
        allowed = labels.unsqueeze(0) != labels[anchors].unsqueeze(1)  # other speakers ...
        allowed.scatter_(1, pos, True)  # ... and the k positives
        log_den = torch.logsumexp(s.masked_fill(~allowed, float("-inf")), dim=1, keepdim=True)
        return -(s.gather(1, pos) - log_den).mean()


@ENCODER_LOSSES.register("kpositive")
class KPositiveContrastive(EncoderLoss):
    """k-positive supervised contrastive loss (Kang et al. 2021)."""

    def __init__(self, weight: NonNegative = 1.0, k: AtLeast1 = 1, temperature: Positive = 0.1):
        super().__init__(weight)
        self.k, self.temperature = int(k), float(temperature)

    def term(self, emb: Tensor, labels: Tensor, feats: Tensor, extractor: nn.Module) -> Tensor:
        """The k-positive contrastive loss of the batch."""
        return kpositive_contrastive(emb, labels, self.k, self.temperature)


def _gather(x: Tensor) -> Tensor:
    """x of every rank, concatenated in rank order (x itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@ENCODER_LOSSES.register("semi_siamese")
class SemiSiamese(EncoderLoss):
    """Semi-siamese training: momentum extractor, FIFO queue of negatives, additive margin (Du et al. 2020)."""

    def __init__(self, weight: NonNegative = 1.0, momentum: Annotated[float, Range(0, 1)] = 0.999,
                 queue_size: AtLeast1 = 4096, scale: Positive = 32.0, margin: NonNegative = 0.35):
        super().__init__(weight)
        self.m, self.scale, self.margin = float(momentum), float(scale), float(margin)
        self.queue_size = int(queue_size)
        self.momentum_encoder: nn.Module | None = None
        self.register_buffer("ready", torch.zeros((), dtype=torch.long))  # 1 once xi was copied from theta
        self.register_buffer("queue_labels", torch.full((self.queue_size,), -1, dtype=torch.long))  # -1: empty
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def attach(self, extractor: nn.Module) -> None:
        """Create the momentum copy of `extractor` (frozen, eval mode); its weights are copied at the first step,
        so an init_from or resumed extractor is what it starts from."""
        self.momentum_encoder = copy.deepcopy(extractor).eval()
        for p in self.momentum_encoder.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", torch.zeros(self.queue_size, int(extractor.embed_dim)))

    def train(self, mode: bool = True) -> SemiSiamese:
        """Train mode for the module; the momentum copy always embeds in eval mode (its BN statistics are EMAs)."""
        super().train(mode)
        if self.momentum_encoder is not None:
            self.momentum_encoder.eval()
        return self

    @torch.no_grad()
    def momentum_update(self, extractor: nn.Module) -> None:
        """xi <- m xi + (1 - m) theta over parameters and floating buffers (others copied); a plain copy the first
        time."""
        first = int(self.ready) == 0
        src = dict(extractor.state_dict())
        ema_dst, ema_src = [], []
        for name, t in self.momentum_encoder.state_dict().items():
            if first or not t.is_floating_point():
                t.copy_(src[name])
            else:
                ema_dst.append(t)
                ema_src.append(src[name].to(t.dtype))
        if ema_dst:  # one multi-tensor op each instead of two kernels per tensor
            torch._foreach_mul_(ema_dst, self.m)
            torch._foreach_add_(ema_dst, ema_src, alpha=1.0 - self.m)
        self.ready.fill_(1)

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor) -> None:
        """Append keys (oldest first) to the FIFO ring; only the last queue_size are kept."""
        keys, labels = keys[-self.queue_size:], labels[-self.queue_size:]
        n, ptr = len(keys), int(self.queue_ptr)
        idx = (ptr + torch.arange(n, device=keys.device)) % self.queue_size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_labels[idx] = labels
        self.queue_ptr.fill_((ptr + n) % self.queue_size)

    def queue_contents(self) -> tuple[Tensor, Tensor]:
        """(embeddings, labels) held in the queue, oldest first (empty slots left out)."""
        order = (int(self.queue_ptr) + torch.arange(self.queue_size, device=self.queue.device)) % self.queue_size
        keep = order[self.queue_labels[order] >= 0]
        return self.queue[keep], self.queue_labels[keep]

    def prepare(self, extractor: nn.Module) -> None:
        """The momentum update, before the online forward: its BatchNorm statistics are then the ones DDP has just
        broadcast from rank 0, so every rank's momentum copy stays equal."""
        self.momentum_update(extractor)

    def term(self, emb: Tensor, labels: Tensor, feats: Tensor, extractor: nn.Module) -> Tensor:
        """Additive-margin CE of each item's positive against the queue; then the batch's keys enter the queue."""
        with torch.no_grad():
            keys = F.normalize(self.momentum_encoder(feats).float(), dim=1)
        anchors, partner = cyclic_partners(labels, 1)
        positive = torch.arange(len(labels), device=labels.device)
        positive[anchors] = partner[:, 0]  # alone in the batch: its own momentum embedding
        with _fp32(emb):
            q = F.normalize(emb, dim=1)
            pos = (q * keys[positive]).sum(1, keepdim=True) - self.margin
            neg = q @ self.queue.T.to(q.dtype, copy=True)  # a copy: the enqueue below writes the buffer in place
            own_or_empty = (self.queue_labels.unsqueeze(0) == labels.unsqueeze(1)) | (self.queue_labels < 0)
            logits = self.scale * torch.cat([pos, neg.masked_fill(own_or_empty, float("-inf"))], dim=1)
            loss = F.cross_entropy(logits, torch.zeros(len(labels), dtype=torch.long, device=labels.device))
        self.enqueue(_gather(keys), _gather(labels))
        return loss


@runtime_checkable
class NeedsExtractor(Protocol):
    """An encoder loss that keeps its own copy of the extractor (semi-siamese: the momentum encoder)."""

    def attach(self, extractor: nn.Module) -> None:
        """Take the extractor the loss's own copy follows."""



def check_encoder_loss(section: Mapping[str, Any]) -> dict[str, Any] | None:
    """The section's keyword arguments, coerced by the term's annotations (None for name 'none'); an unknown name
    or key, or a value of the wrong kind, is a UsageError naming it (before any data is read)."""
    from ..registry import check_kwargs
    from .config import section_kwargs

    name = section.get("name", NONE)
    if name in (None, NONE):
        return None
    return check_kwargs(ENCODER_LOSSES.get(name), section_kwargs(section), "encoder_loss")


def build_encoder_loss(section: Mapping[str, Any], extractor: nn.Module) -> nn.Module | None:
    """The `encoder_loss` section's module (None for name 'none'), attached to `extractor` where it needs one."""
    kwargs = check_encoder_loss(section)
    if kwargs is None:
        return None
    module = ENCODER_LOSSES.build(section["name"], **kwargs)
    if isinstance(module, NeedsExtractor):
        module.attach(extractor)
    return module
