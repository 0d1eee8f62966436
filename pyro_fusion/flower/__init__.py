"""
Federated KL-fusion with `Flower <https://flower.ai>`_ (``pip install pyro-fusion[flower]``).

:class:`KLFusion` is a server strategy on Flower's Message API that fuses clients' mean-field
guides of any width; :func:`receive_global` and :func:`reply` are the client-side helpers;
:mod:`pyro_fusion.flower.wire` is the record format. Importing this package needs ``flwr``;
the rest of pyro_fusion does not.
"""
try:
    import flwr  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "pyro_fusion.flower needs Flower: pip install 'pyro-fusion[flower]' (or flwr[simulation]>=1.42)"
    ) from e

from .client import GlobalRound, receive_global, reply
from .strategy import KLFusion, Rejection, RoundFusion, check_magnitudes, zero_mean_prior
from .wire import encode, read_global, read_reply, reply_content

__all__ = [
    "GlobalRound",
    "KLFusion",
    "Rejection",
    "RoundFusion",
    "check_magnitudes",
    "encode",
    "read_global",
    "read_reply",
    "receive_global",
    "reply",
    "reply_content",
    "zero_mean_prior",
]
