"""
The one SVI loop of pyro_fusion's models (GMM, HMM, LDA with Adam, BNN): each model chooses its
ELBO, optimiser and batches; this runs the steps, with an optional progress bar.
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Mapping, Optional, Sequence

from pyro.infer import SVI
from pyro.infer.elbo import ELBO
from pyro.optim import PyroOptim
from tqdm.auto import tqdm

__all__ = ["svi_steps"]


def svi_steps(
    model: Callable,
    guide: Callable,
    optim: PyroOptim,
    loss: ELBO,
    batches: Iterable[Sequence],
    *,
    kwargs: Optional[Mapping] = None,
    num_steps: Optional[int] = None,
    progress: bool = False,
    desc: str = "SVI",
) -> List[float]:
    """
    One :meth:`SVI.step <pyro.infer.SVI.step>` per item of ``batches`` (the model's positional
    arguments of that step); the loss of every step.

    ``batches`` is read lazily, one item per step, so a generator that draws a random
    minibatch draws it just before its step.

    Example::

        >>> import itertools
        >>> losses = svi_steps(model, guide, Adam({"lr": 0.01}), Trace_ELBO(),
        ...                    itertools.repeat((data, 3), 100), progress=True)
        >>> len(losses)
        100

    :param model: the model.
    :param guide: its guide.
    :param optim: a Pyro optimiser.
    :param loss: an ELBO.
    :param batches: per step, a tuple of the model's (and guide's) positional arguments.
    :param dict kwargs: keyword arguments of every step.
    :param int num_steps: the number of items in ``batches``, for the progress bar.
    :param bool progress: show a tqdm progress bar (off by default).
    :param str desc: the progress bar's label.
    :returns: the loss of every step.
    """
    svi = SVI(model, guide, optim, loss)
    kwargs = dict(kwargs or {})
    return [svi.step(*args, **kwargs) for args in tqdm(batches, desc=desc, total=num_steps, disable=not progress)]
