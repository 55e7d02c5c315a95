"""Training a committee: K fine-tuned copies of one checkpoint with different seeds and splits.

Each member is an ordinary fine-tuning run (``init_from``) in its own folder
``member_<k>`` with seed ``seed + k``; the seed sets the member's
train/validation/test split, its shuffling and nothing else, so the members
see different data and disagree where the data are thin. Fine-tuning from one
trained checkpoint makes a committee cheap: a few epochs per member instead
of K trainings from scratch.

:func:`train_committee` is resumable member by member: a member whose folder
holds a training state is resumed (a finished one only re-reads its test
report), a finished member carried without it (:func:`~so3krates_openmm.training.trainer.finished_run`) is
taken as it is, the others start. A kill at any moment loses at most the work since
that member's last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from so3krates_openmm.data.dataset import MolecularDataset
from so3krates_openmm.training.config import TrainingConfig
from so3krates_openmm.training.trainer import LAST_CHECKPOINT, TrainingResult, finished_run, train

#: Members of a committee unless told otherwise (as aims-PAX and most query-by-committee set-ups).
DEFAULT_MEMBERS = 4


@dataclass(frozen=True)
class CommitteeResult:
    """The members' training results, in member order."""

    members: list[TrainingResult]

    @property
    def checkpoints(self) -> list[Path]:
        return [member.best_checkpoint for member in self.members]


def member_directory(output: str | Path, index: int) -> Path:
    """Folder of committee member ``index`` below ``output``."""
    return Path(output) / f"member_{index}"


def train_committee(
    config: TrainingConfig,
    members: int = DEFAULT_MEMBERS,
    dataset: MolecularDataset | None = None,
    log: Callable[[str], None] = print,
    member_init_from: Sequence[str | Path] | None = None,
) -> CommitteeResult:
    """Fine-tune ``members`` models from ``config.init_from`` into ``config.output/member_<k>``.

    Args:
        config: options of one member's run; ``init_from`` (the checkpoint all members start from)
            is required, ``seed`` is the first member's seed (member k uses ``seed + k``), ``output``
            the committee's folder.
        members: committee size K (at least 2).
        dataset: the data, if already loaded (otherwise ``config.data`` is read by each run).
        log: where progress lines go.
        member_init_from: one checkpoint per member to start from instead of ``config.init_from``
            (e.g. the members of the previous active-learning iteration).
    """
    if members < 2:
        raise ValueError(f"a committee needs at least 2 members, got {members}")
    if member_init_from is not None and len(member_init_from) != members:
        raise ValueError(f"{len(member_init_from)} starting checkpoints for {members} members")
    if not config.init_from and member_init_from is None:
        raise ValueError(
            "a committee is fine-tuned from one trained checkpoint: give init_from (--init-from CHECKPOINT)"
        )
    results = []
    for index in range(members):
        output = member_directory(config.output, index)
        carried = finished_run(output)
        if carried is not None:
            log(f"committee member {index + 1}/{members}: finished in {output} ({carried.stop_reason})")
            results.append(carried)
            continue
        started = (output / LAST_CHECKPOINT).exists()
        member_config = replace(
            config,
            seed=config.seed + index,
            output=str(output),
            resume=started,
            init_from=None if started else str(member_init_from[index]) if member_init_from else config.init_from,
        )
        log(f"committee member {index + 1}/{members}: {'resuming' if started else 'training'} in {output}")
        results.append(train(member_config, dataset=dataset, log=log))
    return CommitteeResult(results)
