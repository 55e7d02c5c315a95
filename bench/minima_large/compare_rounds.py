"""The minima searches of successive active-learning rounds against GFN2-xTB, side by side (issue 18).

    python bench/minima_large/compare_rounds.py   # -> bench/minima_large/rounds.png, and a table on stdout

Reads ``bench/minima_large/summary.json`` (the last round's search, issue 18's result) and
``bench/minima_large/round<N>/summary.json`` (round 1, the shipped model, and the earlier rounds as
``bench/campaign.py`` runs them), and plots per round the fraction of re-optimised minima that GFN2-xTB keeps as the
same minimum and the Spearman correlation of their energies: for the minima of the MD snapshots and for those only
the random-dihedral starts found. A summary's round is its model's, ``runs/minima_large/`` (round 1) or
``runs/minima_large_round<N>/``.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from so3krates_openmm.md.plotting import pyplot, save_figure

HERE = Path(__file__).resolve().parent


#: The model folder of each round's search (``campaign.py``'s ``minima_round_files``): round 1 has no number.
ROUND_MODEL = re.compile(r"(?:^|/)runs/minima_large(?:_round(\d+))?/")


def summary_round(summary: dict, path: Path) -> int:
    """The active-learning round of the search that wrote ``summary`` (read from ``path``), from its model's folder."""
    match = ROUND_MODEL.search(summary.get("model", ""))
    if match is None:
        raise SystemExit(f"{path}: its model {summary.get('model')!r} is not in runs/minima_large/ or "
                         "runs/minima_large_round<N>/, so its round is unknown: move the summary out of the folder")
    return int(match.group(1) or 1)


def round_summaries(folder: Path) -> dict[int, dict]:
    """``{round: summary}`` of ``folder/summary.json`` and ``folder/round<N>/summary.json``, by their models' rounds."""
    paths = [folder / "summary.json", *(path for path in folder.glob("round*/summary.json")
                                        if re.fullmatch(r"round\d+", path.parent.name))]
    found: dict[int, tuple[Path, dict]] = {}
    for path in filter(Path.is_file, paths):
        summary = json.loads(path.read_text())
        number = summary_round(summary, path)
        if number in found:
            raise SystemExit(f"{found[number][0]} and {path} are both searches of round {number}'s model: keep one")
        found[number] = (path, summary)
    return {number: found[number][1] for number in sorted(found)}


def table(summaries: dict[int, dict]) -> list[dict]:
    """One row per round: counts and the xTB comparison of the MD's minima and of the random-dihedral-only ones."""
    rows = []
    for number, summary in summaries.items():
        torsion = summary.get("torsion_search") or {}
        rows.append({
            "round": number, "n_snapshots": summary["n_snapshots"], "n_minima": summary["n_minima"],
            "md_validated": summary["n_validated"], "md_same": summary["same_minimum_fraction"],
            "md_spearman": summary["energy_spearman"], "md_mae_kj_mol": summary["relative_energy_mae_kj_mol"],
            "starts": torsion.get("n_starts"), "starts_new_bond": torsion.get("n_rejected"),
            "torsion_minima": torsion.get("n_minima"), "torsion_only": torsion.get("n_only_torsion_search"),
            "torsion_validated": torsion.get("n_validated"), "torsion_same": torsion.get("same_minimum_fraction"),
            "torsion_spearman": torsion.get("energy_spearman"),
        })
    return rows


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), sharey=True)
    rounds = np.array([row["round"] for row in rows])
    for axis, key, title in ((axes[0], "same", "same minimum after xTB re-optimisation"),
                             (axes[1], "spearman", "Spearman of the relative energies")):
        for offset, group, label in ((-0.18, "md", "MD snapshots' minima"),
                                     (0.18, "torsion", "found only from random dihedrals")):
            values = [np.nan if row[f"{group}_{key}"] is None else row[f"{group}_{key}"] for row in rows]
            bars = axis.bar(rounds + offset, values, width=0.36, label=label)
            counts = [row[f"{group}_validated"] for row in rows]
            axis.bar_label(bars, labels=[f"n={n}" if n else "" for n in counts], fontsize=7)
        axis.set_xticks(rounds, [f"round {n}" for n in rounds])
        axis.set_title(title, fontsize=9)
        axis.set_ylim(0, 1.05)
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("against GFN2-xTB")
    axes[0].legend(fontsize=7, loc="upper left")
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=HERE,
                        help="the last round's summary.json and the round<N>/ folders")
    parser.add_argument("-o", "--output", type=Path, default=HERE / "rounds.png", help="the figure")
    args = parser.parse_args(argv)
    summaries = round_summaries(args.folder)
    if not summaries:
        raise SystemExit(f"no summary.json in {args.folder} or its round<N>/ folders: run bench/minima_large/run.py")
    rows = table(summaries)
    for row in rows:
        print("  ".join(f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}"
                        for key, value in row.items()))
    plot(rows, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
