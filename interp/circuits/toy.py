"""The toy networks of the interpretability illusion (after Makelov, Lange, Geiger and Nanda 2024, section 3): a
known ground truth on which subspace patching, DAS and the illusion diagnostics can be checked.

One residual block with a linear hidden layer, the shape of an MLP between two points of a residual stream:

    r0 = x (4 dims: 0 the binary feature f plus noise, 1-2 nuisance noise, 3 empty)
    h  = W_in r0 (6 dims: the site that is patched, the analogue of `mlp.hook_post`)
    r1 = r0 + W_out h
    logit difference = scale * (r1 . readout - 1/2), logits [-ld/2, +ld/2] (class 1 = feature on)

Hidden directions: h0 copies the feature (it varies with the input), h1 is constant 0 on every input (no input
writes it), h2..h5 copy the nuisance noise and write it into the unread residual dims 1-2.

- `illusion_toy()`: the feature reaches the output through the skip connection r0 -> r1 only. h0 is
  *disconnected* (W_out h0 = 0: in the kernel of the reader), h1 is *dormant* (W_out h1 = 2 e0: read, writing
  into the feature's residual dim, but constant on the data). Patching all of h changes nothing (what differs, h0
  and the nuisance, is never read); patching the 1-d subspace along (h0 + h1)/sqrt2 moves the source-minus-base
  feature difference f_s - f_b onto h1 at half size, and W_out writes 2 * (f_s - f_b) / 2 into the feature dim:
  the output flips, the illusion.
- `faithful_toy()`: the feature reaches the output only through the hidden layer, along h0 (W_out h0 = e3, read
  by the logits); h1 is constant and unread. Patching h0 is the real mechanism.

The paired task: clean inputs have f = 1, corrupted f = 0 (answer class 1, wrong class 0), with independent
noise; `toy_interchange` makes the `interp.circuits.das.Interchange` of patching clean (source) into corrupted (base).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp.circuits.das import Interchange
from interp.core.interventions import patch_component
from interp.errors import InterpError

RESID, HIDDEN = 4, 6
FEATURE = 0  # the residual dim that carries the feature


@dataclass
class Toy:
    """A frozen toy network (module docstring): W_in [hidden, resid], W_out [resid, hidden], the logit readout."""

    name: str
    W_in: Float[Tensor, "hidden resid"]
    W_out: Float[Tensor, "resid hidden"]
    readout: Float[Tensor, "resid"]
    scale: float = 6.0

    def hidden(self, x: Float[Tensor, "n resid"]) -> Float[Tensor, "n hidden"]:
        return x @ self.W_in.T

    def logits(self, x: Float[Tensor, "n resid"], h: Float[Tensor, "n hidden"]) -> Float[Tensor, "n 2"]:
        """The output given the input (through the skip connection) and the hidden activations (maybe patched)."""
        ld = self.scale * ((x + h @ self.W_out.T) @ self.readout - 0.5)
        return torch.stack([-ld / 2, ld / 2], -1)

    def direction(self, *dims: int) -> Float[Tensor, "hidden"]:
        """The unit vector along the sum of the given hidden basis directions (e.g. (0, 1): the illusory one)."""
        v = torch.zeros(HIDDEN)
        v[list(dims)] = 1.0
        return v / v.norm()


def _nuisance() -> tuple[Tensor, Tensor]:
    """W_in rows and W_out columns of h2..h5: copies of the input noise, written into the unread dims 1-2."""
    w_in = torch.tensor([[0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 1, 0], [0, 1, -1, 0]], dtype=torch.float32)
    w_out = torch.tensor([[0, 0, 0, 0], [1, 0, 0.5, 0.5], [0, 1, 0.5, -0.5], [0, 0, 0, 0]], dtype=torch.float32)
    return w_in, w_out


def illusion_toy() -> Toy:
    """The feature goes around the hidden layer; h0 disconnected, h1 dormant and read (module docstring)."""
    w_in_noise, w_out_noise = _nuisance()
    W_in = torch.cat([torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]), w_in_noise])
    W_out = torch.cat([torch.tensor([[0.0, 2.0], [0, 0], [0, 0], [0, 0]]), w_out_noise], 1)
    return Toy("toy-illusion", W_in, W_out, torch.tensor([1.0, 0, 0, 0]))


def faithful_toy() -> Toy:
    """The feature is read through h0 only; h1 constant and unread (module docstring)."""
    w_in_noise, w_out_noise = _nuisance()
    W_in = torch.cat([torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]), w_in_noise])
    W_out = torch.cat([torch.tensor([[0.0, 0.0], [0, 0], [0, 0], [1, 0]]), w_out_noise], 1)
    return Toy("toy-faithful", W_in, W_out, torch.tensor([0, 0, 0, 1.0]))


TOYS = {"illusion": illusion_toy, "faithful": faithful_toy}


def make_toy(kind: str) -> Toy:
    if kind not in TOYS:
        raise InterpError(f"unknown toy {kind!r}; choose {' or '.join(TOYS)}")
    return TOYS[kind]()


def toy_inputs(n: int, seed: int = 0, noise: float = 0.1) -> tuple[Float[Tensor, "n resid"], Float[Tensor, "n resid"]]:
    """Clean (f = 1) and corrupted (f = 0) inputs, independent N(0, noise^2) on the feature, N(0, 1) nuisance."""
    if not isinstance(n, int) or n < 1:
        raise InterpError(f"n={n!r} toy items asked for; give a positive integer")
    gen = torch.Generator().manual_seed(seed)

    def draw(f: float) -> Tensor:
        x = torch.zeros(n, RESID)
        x[:, FEATURE] = f + noise * torch.randn(n, generator=gen)
        x[:, 1:3] = torch.randn(n, 2, generator=gen)
        return x

    return draw(1.0), draw(0.0)


def toy_interchange(toy: Toy, n: int = 64, seed: int = 0, noise: float = 0.1) -> Interchange:
    """Patching the clean run's hidden activations (source) into the corrupted run (base), answer class 1."""
    clean, corrupted = toy_inputs(n, seed, noise)
    h_clean, h_corr = toy.hidden(clean), toy.hidden(corrupted)

    def run(items: Sequence[int], basis: Tensor | None) -> Tensor:
        i = torch.as_tensor(list(items), dtype=torch.long)
        h = h_clean[i] if basis is None else patch_component(h_corr[i], h_clean[i], basis)
        return toy.logits(corrupted[i], h)

    def ld(logits: Tensor) -> Tensor:
        return logits[:, 1] - logits[:, 0]

    provenance = {"model": {"name": toy.name}, "site": "hidden", "positions": [-1], "task": "toy",
                  "base": "corrupted", "source": "clean", "seed": seed}
    return Interchange(run, h_clean[:, None], h_corr[:, None], torch.ones(n, dtype=torch.long),
                       torch.zeros(n, dtype=torch.long), ld(toy.logits(clean, h_clean)),
                       ld(toy.logits(corrupted, h_corr)), provenance, batch_size=n)
