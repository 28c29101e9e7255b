"""Model links: small torch networks mapping one black-box model's output to another's.

One module per link kind, as in the paper and its reference code:

- :class:`VecToVecLink` -- MLP, hidden width ``2 x`` the output size, dropout 0.5, ReLU.
- :class:`SeqToVecLink` -- embedding -> LSTM -> dense.
- :class:`VecToSeqLink` / :class:`SeqToSeqLink` -- an encoder and a GRU decoder with attention.

Every ``forward`` returns *logits*; :func:`activate` applies the target task's output activation.
Keeping the activation out of ``forward`` lets the losses use the numerically stable
``*_with_logits`` forms, while inference still produces probabilities.

Vector inputs are standardised with statistics frozen from the training data (buffers, saved in the
state dict): counts and box coordinates have very different scales, and RMSprop at lr 0.01 on raw
counts diverges easily.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from mlink.topics.specs import OutputSpec, SequenceSpec

LinkTask = Literal["softmax", "sigmoid", "linear", "count", "sequence"]


def activate(task: str, logits: torch.Tensor) -> torch.Tensor:
    """The target task's output activation (softmax/sigmoid probabilities, identity otherwise)."""
    if task == "softmax":
        return torch.softmax(logits, dim=-1)
    if task == "sigmoid":
        return torch.sigmoid(logits)
    if task == "sequence":
        return logits.argmax(dim=-1)
    return logits


def hidden_width(out_dim: int, hidden_mult: int, min_hidden: int) -> int:
    """The paper's ``hidden_mult * out_dim``, floored at ``min_hidden``.

    With the paper's width a 1-value count target gets two hidden units, and dropout 0.5 then leaves
    one on average: too little to learn even a deterministic map. The floor keeps small targets
    trainable; ``min_hidden=0`` is the paper exactly.
    """
    return max(hidden_mult * out_dim, min_hidden)


class Standardize(nn.Module):
    """Fixed affine input normalisation whose statistics travel with the link's state dict."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(x.std(dim=0, unbiased=False).clamp_min(1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class VecToVecLink(nn.Module):
    """The paper's vec->vec link: ``Dense(2*out) -> Dropout(0.5) -> ReLU -> Dense(out)``."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_mult: int = 2,
        dropout: float = 0.5,
        min_hidden: int = 0,
    ) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        hidden = hidden_width(out_dim, hidden_mult, min_hidden)
        self.norm = Standardize(in_dim)
        self.hidden = nn.Linear(in_dim, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.dropout(self.hidden(self.norm(x)))))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}"


class SeqToVecLink(nn.Module):
    """Embedding -> LSTM -> dense, reading the LSTM state at each sequence's last real token."""

    def __init__(self, vocab_size: int, out_dim: int, hidden_mult: int = 2) -> None:
        super().__init__()
        hidden = max(16, hidden_mult * out_dim)
        self.vocab_size, self.out_dim = vocab_size, out_dim
        self.embed = nn.Embedding(vocab_size + 1, hidden, padding_idx=vocab_size)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        lengths = (tokens != self.vocab_size).sum(dim=1).clamp_min(1)
        states, _ = self.lstm(self.embed(tokens))
        last = states[torch.arange(tokens.shape[0]), lengths - 1]
        return self.out(last)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, out_dim={self.out_dim}"


class AttentionDecoder(nn.Module):
    """GRU decoder with dot-product attention over an encoder memory.

    Token ids: ``0..vocab-1`` real, ``vocab`` = end of sequence, ``vocab+1`` = start (input only).
    Teacher forcing during training; greedy decoding at inference.
    """

    def __init__(self, vocab_size: int, hidden: int, max_length: int) -> None:
        super().__init__()
        self.vocab_size, self.max_length = vocab_size, max_length
        self.eos, self.bos = vocab_size, vocab_size + 1
        self.embed = nn.Embedding(vocab_size + 2, hidden)
        self.gru = nn.GRUCell(2 * hidden, hidden)
        self.out = nn.Linear(2 * hidden, vocab_size + 1)

    def _step(
        self, token: torch.Tensor, state: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.einsum("bh,bmh->bm", state, memory).masked_fill(~mask, -1e9)
        context = torch.einsum("bm,bmh->bh", torch.softmax(scores, dim=1), memory)
        state = self.gru(torch.cat([self.embed(token), context], dim=1), state)
        return self.out(torch.cat([state, context], dim=1)), state

    def forward(
        self,
        memory: torch.Tensor,
        mask: torch.Tensor,
        state: torch.Tensor,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``(batch, max_length + 1, vocab + 1)``; the last step predicts end-of-sequence."""
        batch = memory.shape[0]
        token = torch.full((batch,), self.bos, dtype=torch.long, device=memory.device)
        steps = []
        for t in range(self.max_length + 1):
            logits, state = self._step(token, state, memory, mask)
            steps.append(logits)
            token = targets[:, t] if targets is not None else logits.argmax(dim=1)
        return torch.stack(steps, dim=1)


def sequence_targets(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Padded ``(B, L)`` ids (pad = vocab) -> ``(B, L+1)`` decoder targets: ids, EOS, then -100."""
    batch, length = tokens.shape
    out = torch.full((batch, length + 1), -100, dtype=torch.long)
    lengths = (tokens != vocab_size).sum(dim=1)
    out[:, :length] = torch.where(tokens == vocab_size, torch.full_like(tokens, -100), tokens)
    out[torch.arange(batch), lengths] = vocab_size
    return out


def decode_tokens(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Greedy ids from decoder logits, padded with ``vocab_size`` after the first EOS."""
    ids = logits.argmax(dim=-1)[:, :-1]
    ended = torch.cumsum((ids == vocab_size).long(), dim=1) > 0
    return ids.masked_fill(ended, vocab_size)


class VecToSeqLink(nn.Module):
    """Vector -> token sequence: the vector is projected to a few memory slots for attention."""

    def __init__(
        self, in_dim: int, vocab_size: int, max_length: int, hidden: int = 64, slots: int = 4
    ) -> None:
        super().__init__()
        self.in_dim, self.vocab_size, self.slots, self.hidden = in_dim, vocab_size, slots, hidden
        self.norm = Standardize(in_dim)
        self.encode = nn.Linear(in_dim, slots * hidden)
        self.init_state = nn.Linear(in_dim, hidden)
        self.decoder = AttentionDecoder(vocab_size, hidden, max_length)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(x)
        memory = torch.tanh(self.encode(x)).view(x.shape[0], self.slots, self.hidden)
        mask = torch.ones(x.shape[0], self.slots, dtype=torch.bool)
        return self.decoder(memory, mask, torch.tanh(self.init_state(x)), targets)


class SeqToSeqLink(nn.Module):
    """Token sequence -> token sequence: GRU encoder, attention GRU decoder."""

    def __init__(self, in_vocab: int, out_vocab: int, max_length: int, hidden: int = 64) -> None:
        super().__init__()
        self.in_vocab, self.vocab_size = in_vocab, out_vocab
        self.embed = nn.Embedding(in_vocab + 1, hidden, padding_idx=in_vocab)
        self.encoder = nn.GRU(hidden, hidden, batch_first=True)
        self.decoder = AttentionDecoder(out_vocab, hidden, max_length)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        mask = tokens != self.in_vocab
        mask[:, 0] = True  # an empty input still needs one slot to attend to
        memory, last = self.encoder(self.embed(tokens))
        return self.decoder(memory, mask, last[0], targets)


def build_link(
    source: OutputSpec,
    target: OutputSpec,
    hidden_mult: int = 2,
    dropout: float = 0.5,
    min_hidden: int = 0,
) -> nn.Module:
    """The link architecture the paper uses for this (source kind, target kind) pair."""
    src_seq = isinstance(source, SequenceSpec)
    tgt_seq = isinstance(target, SequenceSpec)
    if not src_seq and not tgt_seq:
        return VecToVecLink(source.link_dim, target.link_dim, hidden_mult, dropout, min_hidden)
    if src_seq and not tgt_seq:
        return SeqToVecLink(source.vocab_size, target.link_dim, hidden_mult)
    if not src_seq and tgt_seq:
        return VecToSeqLink(source.link_dim, target.vocab_size, target.max_length)
    return SeqToSeqLink(source.vocab_size, target.vocab_size, target.max_length)


def is_sequence_link(link: nn.Module) -> bool:
    return isinstance(link, VecToSeqLink | SeqToSeqLink)
