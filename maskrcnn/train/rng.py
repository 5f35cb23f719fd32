"""Random generator states as typed values, convertible to ``weights_only``-loadable ones.

:func:`capture_rng` takes the states of Python's ``random``, NumPy's global generator and
torch's CPU and CUDA generators; :func:`restore_rng` puts them back. A checkpoint stores one
:class:`RngState` per rank (:meth:`RngState.to_dict`: lists, numbers, strings, tensors).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class NumpyRngState:
    """NumPy's legacy global generator (``np.random.get_state(legacy=True)``).

    Attributes:
        kind: the bit generator's name ("MT19937").
        keys: [624] int64 tensor of the uint32 key.
        pos: position in the key.
        has_gauss: whether a second Gaussian is cached.
        cached_gaussian: that Gaussian.
    """

    kind: str
    keys: Tensor
    pos: int
    has_gauss: int
    cached_gaussian: float


@dataclass(frozen=True, eq=False)
class RngState:
    """The generator states of one process.

    Attributes:
        python: ``random.getstate()`` as (version, internal state, cached Gaussian).
        numpy: NumPy's global generator.
        torch: torch's CPU generator state ([N] uint8 tensor).
        cuda: one state tensor per CUDA device (empty when CUDA was not in use).
    """

    python: tuple[int, tuple[int, ...], float | None]
    numpy: NumpyRngState
    torch: Tensor  # the field shadows the module in the class body: hence `Tensor`
    cuda: tuple[Tensor, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Plain containers for ``torch.save`` (loadable with ``weights_only=True``)."""
        version, internal, gauss = self.python
        return {
            "python": [int(version), [int(v) for v in internal], gauss],
            "numpy": {
                "kind": self.numpy.kind,
                "keys": self.numpy.keys,
                "pos": self.numpy.pos,
                "has_gauss": self.numpy.has_gauss,
                "cached_gaussian": self.numpy.cached_gaussian,
            },
            "torch": self.torch,
            "cuda": list(self.cuda),
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> RngState:
        """Inverse of :meth:`to_dict`."""
        version, internal, gauss = data["python"]
        np_state = data["numpy"]
        return RngState(
            python=(int(version), tuple(int(v) for v in internal), gauss),
            numpy=NumpyRngState(
                kind=str(np_state["kind"]),
                keys=np_state["keys"],
                pos=int(np_state["pos"]),
                has_gauss=int(np_state["has_gauss"]),
                cached_gaussian=float(np_state["cached_gaussian"]),
            ),
            torch=data["torch"],
            cuda=tuple(data.get("cuda") or ()),
        )


def capture_rng() -> RngState:
    """States of Python's ``random``, NumPy's global generator, torch's CPU and CUDA ones."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    cuda: tuple[torch.Tensor, ...] = ()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = tuple(torch.cuda.get_rng_state_all())
    return RngState(
        python=(int(version), tuple(int(v) for v in internal), gauss),
        numpy=NumpyRngState(
            kind=str(kind),
            keys=torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            pos=int(pos),
            has_gauss=int(has_gauss),
            cached_gaussian=float(cached),
        ),
        torch=torch.get_rng_state(),
        cuda=cuda,
    )


def restore_rng(state: RngState) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only if CUDA is in use here too)."""
    version, internal, gauss = state.python
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    np.random.set_state(
        (
            state.numpy.kind,
            state.numpy.keys.numpy().astype(np.uint32),
            state.numpy.pos,
            state.numpy.has_gauss,
            state.numpy.cached_gaussian,
        )
    )
    torch.set_rng_state(state.torch)
    if state.cuda and torch.cuda.is_available():
        if len(state.cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(list(state.cuda))
        else:
            torch.cuda.set_rng_state(state.cuda[0])
