"""Decode steps that stay on the device: embed -> decoder -> sample in one step (one CUDA graph).

A host-sampled step copies the logits row to the host, samples there and gathers the next
token's embedding on the host. Here the step reads its token from a device buffer, gathers
the embedding, runs the decoder and samples the next token into the same buffer
(:class:`DecodeHead`, captured with the rest of the step by
:class:`slowfast_trt.runtime.decode_graph.StaticDecodeStep`); the host only reads the token
id back, asynchronously (pinned memory and an event per token), for streaming text and stop
checks, while the next step is already queued (:class:`DeviceSteps`, driven by
:func:`slowfast_trt.generation.decode_loop`).

:class:`DeviceSampler` buffers (one set per runner, bound by the graphs):

| buffer        | shape  | dtype   | what                                                     |
|---------------|--------|---------|----------------------------------------------------------|
| token         | (1,)   | int64   | the last sampled token: the next step's input            |
| seen          | (V,)   | bool    | tokens generated so far (repetition penalty)             |
| noise         | (V,)   | float32 | Exp(1) draws of the next sample, drawn before the step   |
| temperature, penalty, top_p_cut | () | float32 | the generation's sampling parameters   |

Equality with :class:`slowfast_trt.sampling.TokenSampler` (the host sampler): the same torch
operations in the same order on float32 scores. Greedy: the same argmax, so the same tokens.
Sampling: ``torch.multinomial(probs, 1)`` is ``argmax(probs / q)`` with ``q ~ Exp(1)`` drawn
by ``exponential_`` from its generator, which is what the device sampler does with a generator
seeded as the host sampler's; on CPU tensors the draws, and so the tokens, are the host
sampler's exactly (tested). On CUDA the generator is CUDA's (Philox): the same distribution,
seeded runs reproducible, but other numbers than the host's CPU generator, so seeded tokens
differ from the host sampler's; CUDA's softmax/cumsum may also round differently at a top-p
boundary.
"""

from __future__ import annotations

import torch

from slowfast_trt.sampling import SamplingParams

__all__ = ["DecodeHead", "DeviceSampler", "DeviceSteps", "sampling_program"]


def sampling_program(params: SamplingParams, vocab: int) -> tuple:
    """The shape of the sampling computation (what a graph records): (greedy, top_k or 0,
    top-p on, penalty on). Temperature, top-p and penalty values are buffers, not part of it."""
    top_k = params.top_k if params.top_k and params.top_k < vocab else 0
    return (params.greedy, 0 if params.greedy else top_k, not params.greedy and params.top_p < 1.0,
            params.repetition_penalty != 1.0)


class DeviceSampler:
    """TokenSampler's processing over fixed buffers on ``device``, without host reads."""

    def __init__(self, vocab: int, device: torch.device):
        self.vocab, self.device = vocab, torch.device(device)
        self.token = torch.zeros(1, dtype=torch.long, device=device)
        self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.noise = torch.ones(vocab, dtype=torch.float32, device=device)
        self.temperature = torch.ones((), dtype=torch.float32, device=device)
        self.penalty = torch.ones((), dtype=torch.float32, device=device)
        self.top_p_cut = torch.zeros((), dtype=torch.float32, device=device)
        self.owner = None  # the DeviceSteps whose state the buffers hold

    def load(self, params: SamplingParams, token: torch.Tensor | None = None, seen: torch.Tensor | None = None):
        """Make the buffers one generation's: its parameters, and its token and seen set (fresh when None)."""
        self.temperature.fill_(params.temperature if not params.greedy else 1.0)
        self.penalty.fill_(params.repetition_penalty)
        self.top_p_cut.fill_(1 - params.top_p)  # the host compares with the float scalar 1 - top_p
        if token is None:
            self.token.zero_()
        else:
            self.token.copy_(token)
        if seen is None:
            self.seen.zero_()
        else:
            self.seen.copy_(seen)

    def sample(self, logits: torch.Tensor, program: tuple) -> None:
        """Next token of ``logits`` (1, V) into :attr:`token`; marks it seen. Capturable."""
        greedy, top_k, top_p, penalty = program
        scores = logits.reshape(-1).to(torch.float32)
        if penalty:
            penalized = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
            scores = torch.where(self.seen, penalized, scores)
        if greedy:
            token = torch.argmax(scores, dim=0, keepdim=True)
        else:
            scores = scores / self.temperature
            if top_k:
                kth = torch.topk(scores, top_k).values[-1]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            if top_p:
                sorted_scores, order = torch.sort(scores, descending=False)
                cumulative = sorted_scores.softmax(-1).cumsum(-1)
                remove = cumulative <= self.top_p_cut
                remove[-1] = False  # keep at least the most likely token
                scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
            token = torch.argmax(scores.softmax(-1) / self.noise, dim=0, keepdim=True)  # = multinomial(probs, 1)
        self.token.copy_(token)
        self.seen.index_fill_(0, self.token, True)


class DecodeHead:
    """What a device decode step runs around the decoder: the embedding gather before it,
    the sampler after it. ``key`` joins the step's binding (another program: another graph)."""

    def __init__(self, table: torch.Tensor, embeds: torch.Tensor, logits: torch.Tensor, sampler: DeviceSampler,
                 program: tuple):
        self.table, self.embeds, self.logits, self.sampler, self.program = table, embeds, logits, sampler, program
        same = table.dtype == embeds.dtype
        self._gathered = embeds[0] if same else torch.zeros((1, embeds.shape[-1]), dtype=table.dtype, device=embeds.device)
        self.key = ("device-head", table.data_ptr(), sampler.token.data_ptr(), program)

    def embed(self) -> None:
        torch.index_select(self.table, 0, self.sampler.token, out=self._gathered)
        if self._gathered.data_ptr() != self.embeds.data_ptr():
            self.embeds[0].copy_(self._gathered)

    def sample(self) -> None:
        self.sampler.sample(self.logits, self.program)


class DeviceSteps:
    """One generation's decode steps on the device, for :func:`slowfast_trt.generation.decode_loop`.

    ``run_step(head)`` runs one static decode step with ``head`` (the runner's), writing its
    cache row at ``kv.length`` without committing it. A step's row is committed (and
    ``on_step(token)`` told which token it consumed) when the loop asks for the token that step
    sampled, i.e. once the loop has used it; the step queued ahead of the last token read is
    never committed, so nothing needs undoing, even for a stream abandoned and closed after its
    session moved on (everything happens inside the loop's own calls). Tokens come back through two pinned host slots, each with an event:
    the loop reads token k while the step that consumes it (and samples k + 1) is already queued.
    Generations may interleave (two open streams): the sampler's buffers are parked in the
    generation that is set aside and restored when it steps again.
    """

    def __init__(self, sampler: DeviceSampler, make_head, run_step, kv, before_step=None, on_step=None):
        self.sampler, self._make_head, self._run_step, self.kv = sampler, make_head, run_step, kv
        self._before_step, self._on_step = before_step, on_step
        cuda = sampler.device.type == "cuda"
        self._host = torch.zeros(2, dtype=torch.long, pin_memory=cuda)
        self._events = [torch.cuda.Event() for _ in range(2)] if cuda else None
        self._pushed = self._read = self._launched = 0
        self._pending = False  # the newest launched step's row is not committed yet
        self._parked = (None, None)
        self.tokens: list[int] = []  # every token read back, in order
        self.params = self.head = self.generator = None

    def start(self, first_logits: torch.Tensor, params: SamplingParams) -> None:
        """Sample the first token from the prefill's logits (1, V) or (V,), on the device."""
        self.params = params
        self.generator = torch.Generator(device=self.sampler.device)
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)
        self.head = self._make_head(sampling_program(params, self.sampler.vocab))
        self._activate()
        self._draw()
        self.sampler.sample(first_logits.reshape(1, -1), self.head.program)
        self._push()

    def launch(self) -> None:
        """Queue the step that consumes the newest sampled token (read already or not) and samples the next."""
        self._commit()  # the loop asks for another token: the previous step was used
        self._activate()
        if self._before_step is not None:
            self._before_step()
        self._draw()
        self._run_step(self.head)
        self._launched += 1
        self._pending = True
        self._push()

    def read(self) -> int:
        """The oldest sampled token not read yet (waits for that token's copy only)."""
        if self._launched == self._read:  # token k comes from step k - 1: asking for it uses that step
            self._commit()
        slot = self._read % 2
        if self._events is not None:
            self._events[slot].synchronize()
        token = int(self._host[slot])
        self._read += 1
        self.tokens.append(token)
        return token

    def finish(self, stepped: int) -> None:
        """The loop used the steps of its first ``stepped`` tokens (all committed by then); one
        queued beyond stays uncommitted (its row lies past the cache's length)."""
        assert stepped in (self._launched, self._launched - 1), (self._launched, stepped)
        assert not self._pending or stepped == self._launched - 1, "a used step was not committed"
        if self.sampler.owner is self:
            self.sampler.owner = None

    def _commit(self) -> None:
        if not self._pending:
            return
        self._pending = False
        self.kv.commit(1)
        if self._on_step is not None:
            self._on_step(self.tokens[self._launched - 1])  # step j consumed token j

    def _draw(self) -> None:
        if not self.params.greedy:
            self.sampler.noise.exponential_(generator=self.generator)

    def _push(self) -> None:
        slot = self._pushed % 2
        self._host[slot:slot + 1].copy_(self.sampler.token, non_blocking=self._events is not None)
        if self._events is not None:
            self._events[slot].record()
        self._pushed += 1

    def _activate(self) -> None:
        sampler = self.sampler
        if sampler.owner is self:
            return
        if sampler.owner is not None:
            sampler.owner._parked = (sampler.token.clone(), sampler.seen.clone())
        sampler.load(self.params, *self._parked)
        sampler.owner = self
