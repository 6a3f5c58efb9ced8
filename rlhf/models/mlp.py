"""The gym policy: separate actor and critic MLPs over a flat observation.

The learners call it on a Batch (`forward`: logprobs, entropy and values in the `[B, A]` layout
of rlhf/batch.py); the env runners call `act` on one observation per env. Both hold the same
module and the same weights (the weight sync sends `rollout_state()`), so the runners' logprobs
equal the learner's up to float rounding.

Discrete action spaces get a categorical policy; Box action spaces a diagonal Gaussian with a
state-independent log standard deviation. The sample is what is stored and scored; clipping
to the action bounds happens only when the runner steps the env (as SB3 / cleanrl do).
Initialisation follows SB3 / cleanrl: orthogonal weights with gain sqrt(2) in the hidden
layers, 0.01 for the policy head and 1 for the value head, zero biases.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rlhf.batch import Batch
from rlhf.config import MlpConfig


@dataclass(frozen=True)
class EnvSpec:
    """What the policy needs to know about a gymnasium env's spaces; picklable, sent to
    learners and runners (built by rlhf.rollout.gym_runner.env_spec_of)."""

    env_id: str
    obs_shape: tuple[int, ...]
    n_actions: int = 0  # Discrete: number of actions; 0 for Box actions
    act_dim: int = 0  # Box: flat action dimension; 0 for Discrete
    low: tuple[float, ...] = ()  # Box: action bounds (the env is stepped with clipped actions)
    high: tuple[float, ...] = ()

    @property
    def discrete(self) -> bool:
        return self.n_actions > 0


_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def _mlp(sizes: list[int], activation: str, out: int, out_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [_init(nn.Linear(a, b), math.sqrt(2)), ACTIVATIONS[activation]()]
    layers.append(_init(nn.Linear(sizes[-1], out), out_gain))
    return nn.Sequential(*layers)


def _init(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class ActorCritic(nn.Module):
    has_critic = True

    def __init__(self, env_spec: EnvSpec, cfg: MlpConfig):
        super().__init__()
        self.obs_shape = tuple(env_spec.obs_shape)
        self.discrete = env_spec.discrete
        obs_dim = math.prod(self.obs_shape)
        sizes = [obs_dim, *cfg.hidden_sizes]
        out = env_spec.n_actions if self.discrete else env_spec.act_dim
        self.actor = _mlp(sizes, cfg.activation, out, 0.01)
        self.critic = _mlp(sizes, cfg.activation, 1, 1.0)
        if not self.discrete:
            self.log_std = nn.Parameter(torch.full((out,), float(cfg.init_log_std)))

    # ------------------------------------------------------------------ distributions
    def _flat(self, obs: Tensor) -> Tensor:
        """[*lead, *obs_shape] -> [*lead, obs_dim] float32."""
        lead = obs.shape[: obs.dim() - len(self.obs_shape)]
        return obs.reshape(*lead, -1).float()

    def _logprob_entropy(
        self, out: Tensor, actions: Tensor, with_entropy: bool
    ) -> tuple[Tensor, Tensor | None]:
        """out: actor output [*lead, n] ; actions [*lead] (long) or [*lead, act_dim]."""
        if self.discrete:
            logp_all = torch.log_softmax(out, dim=-1)
            logp = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
            return logp, entropy
        log_std = self.log_std.expand_as(out)
        z = (actions.to(out.dtype) - out) * torch.exp(-log_std)
        logp = (-0.5 * z.pow(2) - log_std - _LOG_SQRT_2PI).sum(-1)
        entropy = (0.5 + _LOG_SQRT_2PI + log_std).sum(-1) if with_entropy else None
        return logp, entropy

    # ------------------------------------------------------------------ learner side
    def forward(
        self, batch: Batch, with_entropy: bool = True
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """batch.obs [B, A, *obs], batch.actions [B, A] or [B, A, act_dim] ->
        logprobs [B, A], entropy [B, A] (or None), values [B, A]."""
        x = self._flat(batch.obs)
        logp, entropy = self._logprob_entropy(self.actor(x), batch.actions, with_entropy)
        return logp, entropy, self.critic(x).squeeze(-1)

    # ------------------------------------------------------------------ runner side
    @torch.no_grad()
    def act(
        self, obs: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """obs [N, *obs] -> sampled actions [N] or [N, act_dim] (unclipped), their logprobs [N],
        values [N]. `generator` makes the sampling reproducible per runner."""
        x = self._flat(obs)
        out = self.actor(x)
        if self.discrete:
            # Gumbel-max: one kernel instead of Categorical's validation and multinomial.
            u = torch.rand(out.shape, generator=generator)
            actions = (out - torch.log(-torch.log(u))).argmax(-1)
        else:
            actions = out + torch.randn(out.shape, generator=generator) * self.log_std.exp()
        logp, _ = self._logprob_entropy(out, actions, with_entropy=False)
        return actions, logp, self.critic(x).squeeze(-1)

    @torch.no_grad()
    def value(self, obs: Tensor) -> Tensor:
        """obs [N, *obs] -> V(obs) [N]."""
        return self.critic(self._flat(obs)).squeeze(-1)

    def rollout_state(self) -> Iterator[tuple[str, Tensor]]:
        """What the runners load: every parameter (the critic too: runners bootstrap truncated
        episodes and segment ends with it)."""
        return self.named_parameters()
