"""
Builds the compact mocap6 file shipped in ``pyro_fusion/datasets/data/`` from the source release.

The source folder (default ``../shared/data/mocap6`` from the repository root) holds the 6 CMU
exercise sequences of Fox et al. (2014): ``bnpy/dataset.npz`` at full precision (stored in bnpy's
autoregressive layout: ``Xprev`` holds frames 0..T-2 and ``X`` frames 1..T-1 of each sequence),
per-frame behaviour labels ``zTrue.dat`` (1-based, one line per sequence), ``SeqNames.txt``,
``BehaviorNames.txt``, the 6-decimal text copies ``<name>.dat`` and the licences.

The script rebuilds every full sequence, checks it against the ``.dat`` files and the labels
against ``bnpy``'s ``TrueZ``, then writes ``mocap6.npz`` (float32 observations, no pickled
objects) and ``LICENSE.mocap6.txt``. Run it from anywhere::

    python scripts/build_mocap6.py [--source DIR] [--out DIR]
"""

import argparse
import pathlib

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "mocap6"
DEFAULT_OUT = REPO_ROOT / "pyro_fusion" / "datasets" / "data"

# The .dat files are rounded to 6 decimals; float32 storage must stay far below the data scale (~100).
DAT_TOLERANCE = 1e-6
FLOAT32_TOLERANCE = 1e-5

CMU_TERMS = """\
Motion capture data
===================

The sequences are CMU Graphics Lab Motion Capture Database trials 13_29, 13_30, 13_31, 14_06,
14_14 and 14_20 (http://mocap.cs.cmu.edu/). CMU's terms of use: the data is free for use in
research projects and may be included in commercially sold products, but may not be resold
directly, even in converted form; see http://mocap.cs.cmu.edu/ for the full terms. Requested
acknowledgement: "The data used in this project was obtained from mocap.cs.cmu.edu. The database
was created with funding from NSF EIA-0196217."

The 12-channel, 10 fps, behaviour-annotated version is from Fox, Hughes, Sudderth and Jordan,
"Joint Modeling of Multiple Time Series via the Beta Process with Application to Motion Capture
Segmentation", Annals of Applied Statistics 8(3), 2014, as distributed with NPBayesHMM and with
bnpy (https://github.com/michaelchughes/mocap6dataset), under the licences below.
"""


def read_lines(path: pathlib.Path) -> list:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_source(source: pathlib.Path) -> dict:
    """Reads and cross-checks the source release; returns the arrays to store."""
    bnpy = np.load(source / "bnpy" / "dataset.npz", allow_pickle=False)
    starts = bnpy["doc_range"]
    names = read_lines(source / "SeqNames.txt")
    behaviours = read_lines(source / "BehaviorNames.txt")
    labels_1based = [np.array(line.split(), dtype=np.int64) for line in read_lines(source / "zTrue.dat")]
    if not (len(names) == len(labels_1based) == len(starts) - 1):
        raise ValueError(f"{source}: SeqNames.txt, zTrue.dat and dataset.npz disagree on the number of sequences")

    sequences, labels = [], []
    for i, name in enumerate(names):
        begin, end = starts[i], starts[i + 1]
        if not np.array_equal(bnpy["Xprev"][begin + 1 : end], bnpy["X"][begin : end - 1]):
            raise ValueError(f"{source}: dataset.npz Xprev/X of sequence {name} are not consecutive frames")
        sequence = np.concatenate([bnpy["Xprev"][begin : begin + 1], bnpy["X"][begin:end]])
        text_copy = np.loadtxt(source / f"{name}.dat", ndmin=2)
        if text_copy.shape != sequence.shape or np.abs(text_copy - sequence).max() > DAT_TOLERANCE:
            raise ValueError(f"{source}: {name}.dat differs from dataset.npz")
        if labels_1based[i].shape != (len(sequence),):
            raise ValueError(f"{source}: zTrue.dat line {i + 1} has the wrong length for {name}")
        if not np.array_equal(bnpy["TrueZ"][begin:end], labels_1based[i][1:]):
            raise ValueError(f"{source}: zTrue.dat and dataset.npz TrueZ disagree for {name}")
        sequences.append(sequence)
        labels.append(labels_1based[i] - 1)

    observations = np.concatenate(sequences)
    stored = observations.astype(np.float32)
    error = np.abs(stored.astype(np.float64) - observations).max()
    if error > FLOAT32_TOLERANCE:
        raise ValueError(f"float32 storage error {error:.3g} exceeds {FLOAT32_TOLERANCE}")
    all_labels = np.concatenate(labels)
    if all_labels.min() < 0 or all_labels.max() >= len(behaviours):
        raise ValueError(f"{source}: labels outside 1..{len(behaviours)} in zTrue.dat")
    print(f"{len(names)} sequences, {len(observations)} frames, float32 max abs error {error:.3g}")
    return {
        "observations": stored,
        "labels": all_labels.astype(np.uint8),
        "lengths": np.array([len(s) for s in sequences], dtype=np.int64),
        "names": np.array(names),
        "behaviours": np.array(behaviours),
        "channels": bnpy["column_names"].astype(str),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=pathlib.Path, default=DEFAULT_SOURCE, help="source mocap6 folder")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args()
    if not args.source.is_dir():
        raise SystemExit(f"source folder {args.source} not found")

    arrays = load_source(args.source)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "mocap6.npz", **arrays)
    licences = [
        CMU_TERMS,
        "NPBayesHMM (LICENSE.NPBayesHMM)\n===============================\n\n"
        + (args.source / "LICENSE.NPBayesHMM").read_text().strip(),
        "bnpy (LICENSE.bnpy.txt)\n=======================\n\n"
        + (args.source / "bnpy" / "LICENSE.bnpy.txt").read_text().strip(),
    ]
    (args.out / "LICENSE.mocap6.txt").write_text("\n\n\n".join(licences) + "\n")
    print(f"wrote {args.out / 'mocap6.npz'} ({(args.out / 'mocap6.npz').stat().st_size} bytes)")


if __name__ == "__main__":
    main()
