"""
The mocap application (the main job, ``pyro-fusion demo``): segment the CMU mocap6 exercise
data by fusing one HMM per sequence.

Each of the 6 sequences is one client. A client turns its own 12 joint-angle channels into
features, fits a Gaussian HMM with SVI (:func:`~pyro_fusion.models.hmm.fit_gaussian_hmm`),
and sends only its guide and expected state counts. :func:`~pyro_fusion.adapters.hmm.fuse_hmms`
matches the states into global behaviours; every sequence is then decoded (Viterbi) under
the fused global HMM and scored against the true behaviour labels.

Features and coordinates. Frame-wise Gaussian emissions split periodic exercises
(jumping jacks, arm circles) into their phases, so each frame is described by the mean and
standard deviation of every channel over a centred window of ``window`` frames (1 s at
10 fps): ``[T, 24]`` features a client computes from its own sequence. States of different
clients can only be matched in a shared coordinate system, so features are standardised
with the pooled per-feature mean and standard deviation, computed from the per-client
sums ``(n, sum x, sum x^2)`` (a secure-aggregation-friendly summary; no client sees another's
frames), see :func:`pooled_standardiser`.

Rows of the results table (metrics pooled over all frames, see the user guide,
docs/guide/metrics): ``local_mean`` (each local model decoded and scored on its own
sequence, averaged), ``kmeans`` (k-means
with k = 12 on the local emission means; each local decoding relabelled by the cluster of
its state), ``pooled`` (one HMM fitted on all sequences at once, what a party holding all
the data would do), ``fused`` (one-shot: the fused HMM as it comes out of fusion) and
``fused_em`` (the fused HMM after ``num_rounds`` rounds of federated EM,
:func:`~pyro_fusion.adapters.hmm.refine_hmm`: each client sends only per-state sums of its
features under the current global HMM). ``local_on_all_best`` / ``local_on_all_mean``: each
local model decoding *all* sequences, scored like the fused model (the best one and the
mean), i.e. what one party's model is worth on everyone's data. ``metrics.json`` also holds
every row scored per sequence (``local``, ``fused_per_sequence``, ``fused_em_per_sequence``),
the like-for-like comparison with the local models.

Public API: :func:`run_demo` and :func:`format_table` (the whole job), and its steps
:func:`window_features`, :func:`pooled_standardiser`, :func:`segmentation_scores`,
:func:`kmeans_baseline` and :func:`plot_segmentation` (needs matplotlib, imported only
when called), which ``tutorials/mocap_hmm.py`` uses.
"""

import importlib.util
import json
import os
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..adapters.hmm import fuse_hmms, refine_hmm
from ..datasets import load_mocap6
from ..deprecation import rename_kwargs
from ..metrics import adjusted_rand_index, best_matching_accuracy, match_labels
from ..models.clustering import kmeans
from ..models.hmm import FittedHMM, HMMPrior, decode, fit_gaussian_hmm, single_threaded

__all__ = [
    "DEFAULT_STEPS",
    "FIGURE_FILE",
    "FRAMES_PER_SECOND",
    "METRICS_FILE",
    "NUM_BEHAVIOURS",
    "format_table",
    "kmeans_baseline",
    "plot_segmentation",
    "pooled_standardiser",
    "require_matplotlib",
    "run_demo",
    "segmentation_scores",
    "window_features",
]

#: number of behaviours in mocap6 (k of the k-means baseline)
NUM_BEHAVIOURS = 12
#: SVI steps per local fit
DEFAULT_STEPS = 400
#: frame rate of the mocap6 sequences
FRAMES_PER_SECOND = 10
#: the files :func:`run_demo` writes into its ``out`` folder
METRICS_FILE, FIGURE_FILE = "metrics.json", "mocap_segmentation.png"


def window_features(x: torch.Tensor, window: int) -> torch.Tensor:
    """
    Per-channel mean and standard deviation over a centred window (edges repeat the
    first/last frame).

    Example::

        >>> window_features(torch.zeros(5, 2), 3).shape
        torch.Size([5, 4])

    :param Tensor x: ``[T, D]`` sequence.
    :param int window: window length in frames (>= 2).
    :return: ``[T, 2 D]`` features ``[mean, std]``.
    :rtype: torch.Tensor
    """
    if window < 2:
        raise ValueError(f"window_features: window must be >= 2 frames, got {window}")
    before, after = window // 2, window - 1 - window // 2
    padded = torch.cat([x[:1].expand(before, -1), x, x[-1:].expand(after, -1)])
    windows = padded.unfold(0, window, 1)  # [T, D, window]
    return torch.cat([windows.mean(-1), windows.std(-1)], -1)


def pooled_standardiser(
    sequences: Sequence[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Pooled per-channel mean and standard deviation from per-client sufficient statistics
    ``(n_j, sum x, sum x^2)``: the only thing clients share before training.

    :param list sequences: per client, a ``[T_j, D]`` tensor.
    :return: ``(mean, std)``, each ``[D]``.
    :rtype: tuple
    """
    stats = torch.stack(
        [
            torch.stack([torch.full_like(x[0], len(x)), x.sum(0), x.square().sum(0)])
            for x in sequences
        ]
    ).sum(0)  # summed over clients
    count, total, squares = stats.double()
    mean = total / count
    std = (squares / count - mean.square()).clamp(min=0).sqrt()
    if not (std > 0).all():
        raise ValueError("pooled_standardiser: some channel is constant over all clients")
    dtype = sequences[0].dtype
    return mean.to(dtype), std.to(dtype)


def segmentation_scores(
    predicted: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]
) -> Dict[str, float]:
    """
    Segmentation metrics pooled over sequences (see the user guide, docs/guide/metrics).

    :param list predicted: per sequence, predicted state labels ``[T_i]``.
    :param list labels: per sequence, true labels ``[T_i]``.
    :return: ``{"one_minus_hamming", "ari", "num_states"}`` (states used in ``predicted``).
    :rtype: dict
    """
    pred, true = torch.cat(list(predicted)), torch.cat(list(labels))
    return {
        "one_minus_hamming": best_matching_accuracy(pred, true),
        "ari": adjusted_rand_index(pred, true),
        "num_states": int(pred.unique().numel()),
    }


def kmeans_baseline(
    fits: Sequence[FittedHMM],
    paths: Sequence[torch.Tensor],
    states: Sequence[torch.Tensor],
    num_clusters: int,
    seed: int,
) -> List[torch.Tensor]:
    """
    Cluster the local emission means of the kept states with k-means
    (:func:`~pyro_fusion.models.clustering.kmeans`) and relabel each local Viterbi path by
    the cluster of its states.

    :param list fits: local models.
    :param list paths: per client, its local Viterbi path.
    :param list states: per client, LongTensor of kept states (others map to their
        nearest centre as well).
    :param int num_clusters: k.
    :param int seed: k-means seed.
    :return: per client, the relabelled path.
    :rtype: list
    """
    points = torch.cat([fit.params.loc[kept] for fit, kept in zip(fits, states)])
    centres, _ = kmeans(points, num_clusters, seed=seed)
    relabelled = []
    for fit, path in zip(fits, paths):
        cluster = torch.cdist(fit.params.loc, centres).argmin(-1)
        relabelled.append(cluster[path])
    return relabelled


def require_matplotlib(caller: str) -> None:
    """
    Raise at once, with the install hint, if matplotlib is missing: a caller that plots at the end
    checks first rather than failing after all its work.

    :param str caller: named in the message.
    :raises ModuleNotFoundError: if matplotlib cannot be imported.
    """
    if importlib.util.find_spec("matplotlib") is None:
        raise ModuleNotFoundError(
            f"{caller} plots with matplotlib, which is not installed: pip install 'pyro-fusion[plot]' "
            "(or write no files: out=None, pyro-fusion demo --out '')",
            name="matplotlib",
        )


def plot_segmentation(
    path: Optional[str],
    predicted: Union[Sequence[torch.Tensor], Mapping[str, Sequence[torch.Tensor]]],
    labels: Sequence[torch.Tensor],
    names: Sequence[str],
    behaviours: Sequence[str],
    fps: float = FRAMES_PER_SECOND,
):
    """
    Per sequence, the true behaviours above the states of each model, on the sequence's own time
    axis (seconds; sequences of different lengths are drawn to scale). A model's states matched to
    a behaviour (:func:`~pyro_fusion.metrics.match_labels`, over all sequences) share its colour,
    unmatched states are grey; each model's pooled scores (:func:`segmentation_scores`) label its
    rows.

    Example::

        >>> y = [torch.tensor([0, 0, 1, 1]), torch.tensor([1, 1])]
        >>> import matplotlib.pyplot as plt
        >>> fig = plot_segmentation(None, {"fused": y}, y, ["a", "b"], ["walk", "run"])
        >>> [ax.get_ylabel() for ax in fig.axes]
        ['a', 'b']
        >>> plt.close(fig)

    :param str path: where to write the PNG, or None.
    :param predicted: per sequence, the decoded states; or model name -> such a list (one row per
        model, e.g. ``{"fused": ..., "fused + EM": ...}``).
    :param list labels: per sequence, the true behaviour of every frame.
    :param list names: the sequences' names.
    :param list behaviours: the behaviours' names (label ``k`` is ``behaviours[k]``).
    :param float fps: frames per second of the time axis.
    :returns: the pyplot figure (Jupyter shows it; close it with ``plt.close(fig)`` when done).
    """
    require_matplotlib("plot_segmentation")
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    models = dict(predicted) if isinstance(predicted, Mapping) else {"fused": predicted}
    true_all = torch.cat(list(labels))
    num_colours = len(behaviours)
    tab10, dark2 = matplotlib.colormaps["tab10"].colors, matplotlib.colormaps["Dark2"].colors
    palette = [c for c in list(tab10) + list(dark2) if c != tab10[7]]  # tab10's grey means "unmatched"
    colours = palette[:num_colours] + [(0.75, 0.75, 0.75)]
    cmap = ListedColormap(colours)
    rows, row_names, scores = [], ["true"] + list(models), []
    for model, paths in models.items():
        matching = match_labels(torch.cat(list(paths)), true_all)
        rows.append([np.asarray([matching.get(int(s), num_colours) for s in p]) for p in paths])
        score = segmentation_scores(paths, labels)
        scores.append(f"{model}: 1-Hamming {score['one_minus_hamming']:.2f}, ARI {score['ari']:.2f}")
    longest = max(len(y) for y in labels) / fps
    fig = plt.figure(figsize=(10, (0.35 * len(row_names) + 0.45) * len(labels) + 1.2))
    axes = fig.subplots(len(labels), 1, squeeze=False, sharex=True)[:, 0]
    for j, (ax, true, name) in enumerate(zip(axes, labels, names)):
        image = np.stack([true.numpy()] + [model_rows[j] for model_rows in rows])
        ax.imshow(image, aspect="auto", cmap=cmap, vmin=0, vmax=num_colours, interpolation="nearest",
                  extent=(0, len(true) / fps, len(row_names) - 0.5, -0.5))
        ax.set_yticks(range(len(row_names)), row_names, fontsize=7)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", labelpad=8)
        ax.set_xlim(0, longest)
    axes[-1].set_xlabel(f"time (s, {fps:g} frames per second)")
    handles = [Patch(color=colours[k], label=b) for k, b in enumerate(behaviours)]
    handles.append(Patch(color=colours[-1], label="unmatched"))
    fig.legend(handles=handles, loc="lower center", ncol=7, fontsize=7, frameon=False)
    fig.suptitle("mocap6: true behaviours and each model's states (colours via the best matching)\n"
                 + "; ".join(scores), fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.98))
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


@rename_kwargs("run_demo", {"steps": "num_steps", "em_rounds": "num_rounds"})
@single_threaded()
def run_demo(
    seed: int = 0,
    out: Optional[str] = ".",
    num_steps: Optional[int] = None,
    num_states: int = 8,
    pooled_states: int = NUM_BEHAVIOURS,
    window: int = 10,
    prior: HMMPrior = HMMPrior(),
    min_occupancy: float = 1.0,
    sequences: Optional[Sequence[int]] = None,
    progress: bool = True,
    num_rounds: int = 10,
) -> dict:
    """
    Fit one HMM per mocap6 sequence, fuse them, and score every row of the results table.

    Example::

        >>> metrics = run_demo(out=None, num_steps=5, sequences=[0, 3], num_rounds=1, progress=False)
        >>> sorted(metrics["fused"])  # pooled scores of the one-shot fused HMM
        ['ari', 'num_states', 'one_minus_hamming']

    :param int seed: seed of the initialisations, SVI and fusion.
    :param str out: folder for ``metrics.json`` and ``mocap_segmentation.png`` (created if
        needed; the plot needs matplotlib, checked before any work); ``None`` writes nothing.
    :param int num_steps: SVI steps per fit (default :data:`DEFAULT_STEPS`; formerly ``steps``).
    :param int num_states: states per local HMM (generous: each sequence shows 5-8 behaviours).
    :param int pooled_states: states of the pooled-data HMM.
    :param int window: feature window in frames (see the module docstring).
    :param HMMPrior prior: prior shared by all clients.
    :param float min_occupancy: states with fewer expected frames are pruned before fusion.
    :param list sequences: indices of the sequences to use (default all six).
    :param bool progress: show progress bars (local fits, fusion restarts, EM rounds).
    :param int num_rounds: federated EM rounds after fusion (row ``fused_em``; formerly
        ``em_rounds``).
    :return: the metrics dict written to ``metrics.json``.
    :rtype: dict
    """
    num_steps = DEFAULT_STEPS if num_steps is None else num_steps
    if out is not None:
        require_matplotlib("run_demo")
    if num_steps < 1:
        raise ValueError(f"run_demo: num_steps must be >= 1, got {num_steps}")
    if num_rounds < 0:
        raise ValueError(f"run_demo: num_rounds must be >= 0, got {num_rounds}")
    data = load_mocap6()
    chosen = range(len(data.sequences)) if sequences is None else list(sequences)
    if not chosen or not all(0 <= i < len(data.sequences) for i in chosen):
        raise ValueError(
            f"run_demo: sequences must be indices in 0..{len(data.sequences) - 1}, got {sequences}"
        )
    raw = [data.sequences[i] for i in chosen]
    labels = [data.labels[i] for i in chosen]
    names = [data.names[i] for i in chosen]
    features = [window_features(x, window) for x in raw]
    mean, std = pooled_standardiser(features)
    clients = [(f - mean) / std for f in features]

    start = time.perf_counter()
    fits = []
    for j, x in enumerate(tqdm(clients, desc="local HMM fits", disable=not progress)):
        fits.append(fit_gaussian_hmm([x], num_states, prior, num_steps, seed=seed + 1000 * j))
    fused = fuse_hmms(fits, prior=prior, min_occupancy=min_occupancy, seed=seed, progress=progress)
    fused_seconds = time.perf_counter() - start
    refined, log_likelihoods = refine_hmm(
        fused.params, [[x] for x in clients], prior, num_rounds, progress=progress
    )
    em_seconds = time.perf_counter() - start - fused_seconds

    fused_paths = [decode(fused.params, x) for x in clients]
    refined_paths = [decode(refined, x) for x in clients]
    decoded = [[fit.decode(x) for x in clients] for fit in fits]  # [model][sequence]
    local_paths = [paths[j] for j, paths in enumerate(decoded)]
    on_all = [segmentation_scores(paths, labels) for paths in decoded]

    def per_sequence(paths):
        return {name: segmentation_scores([p], [y]) for name, p, y in zip(names, paths, labels)}

    def mean_row(rows):
        return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}

    local = per_sequence(local_paths)

    kept = [(a >= 0).nonzero().squeeze(-1) for a in fused.assignments]
    kmeans_paths = kmeans_baseline(fits, local_paths, kept, min(NUM_BEHAVIOURS, sum(map(len, kept))), seed)
    pooled_fit = fit_gaussian_hmm(clients, pooled_states, prior, num_steps, seed=seed, progress=progress)
    pooled_paths = [pooled_fit.decode(x) for x in clients]

    metrics = {
        "fused": segmentation_scores(fused_paths, labels),
        "fused_em": segmentation_scores(refined_paths, labels),
        "pooled": segmentation_scores(pooled_paths, labels),
        "kmeans": segmentation_scores(kmeans_paths, labels),
        "local_mean": mean_row(list(local.values())),
        "local_on_all_best": max(on_all, key=lambda row: row["one_minus_hamming"]),
        "local_on_all_mean": mean_row(on_all),
        "local": local,
        "fused_per_sequence": per_sequence(fused_paths),
        "fused_em_per_sequence": per_sequence(refined_paths),
        "seconds": fused_seconds,
        "em_seconds": em_seconds,
        "em_log_likelihoods": log_likelihoods,
        "total_seconds": time.perf_counter() - start,
        "seed": seed,
        "num_steps": num_steps,
        "true_states": int(torch.cat(labels).unique().numel()),
        "price": fused.result.price,
    }
    if out is not None:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, METRICS_FILE), "w") as stream:
            json.dump(metrics, stream, indent=2)
        models = {"fused (one-shot)": fused_paths, f"fused + {num_rounds} EM rounds": refined_paths}
        import matplotlib.pyplot as plt

        plt.close(plot_segmentation(os.path.join(out, FIGURE_FILE), models, labels, names, data.behaviours))
    return metrics


def format_table(metrics: dict) -> str:
    """The results table of :func:`run_demo` as text."""
    lines = [f"{'model':<18}{'1-Hamming':>11}{'ARI':>8}{'states':>8}"]
    for row in ("local_mean", "local_on_all_best", "kmeans", "pooled", "fused", "fused_em"):
        m = metrics[row]
        lines.append(
            f"{row:<18}{m['one_minus_hamming']:>11.3f}{m['ari']:>8.3f}{m['num_states']:>8.1f}"
        )
    lines.append(
        f"fused run (local fits + fusion): {metrics['seconds']:.1f} s; "
        f"{len(metrics['em_log_likelihoods'])} federated EM rounds (fused_em): "
        f"{metrics['em_seconds']:.1f} s; true behaviours: {metrics['true_states']}"
    )
    return "\n".join(lines)
