"""The layout of a training run's folder, in one place.

    model.safetensors             weights after the last finished epoch (see ``checkpoint.py``)
    resume.pt                     everything exact resumption needs (see ``resume.py``)
    epochs/epoch_NNN.safetensors  the weights of every epoch
    .lock                         held while a run trains into the folder (see ``lock.py``)

``RunFolder`` names these paths, says which of them are there, and reads the epoch a run could
continue from. The training loop, the lock and the command line ask it rather than spelling the
names out, so that what "a run is there" means is decided once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import is_own_temporary, remove_own_temporaries

WEIGHTS_FILE = "model.safetensors"
RESUME_FILE = "resume.pt"
EPOCHS_DIR = "epochs"
EPOCH_FILE = "epoch_{epoch:03d}.safetensors"
EPOCH_FILES = "epoch_*.safetensors"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class RunFolder:
    """The folder a training run writes into (``--out``); nothing is created by naming it."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def holding(cls, weights: str | Path) -> RunFolder:
        """The run folder a weights file lies in: its own folder, or the run above an ``epochs/`` folder."""
        parent = Path(weights).parent
        return cls(parent.parent if parent.name == EPOCHS_DIR else parent)

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def resume(self) -> Path:
        return self.path / RESUME_FILE

    @property
    def epochs(self) -> Path:
        return self.path / EPOCHS_DIR

    @property
    def lock(self) -> Path:
        return self.path / LOCK_FILE

    def epoch_file(self, epoch: int) -> Path:
        return self.epochs / EPOCH_FILE.format(epoch=epoch)

    def epoch_files(self) -> list[Path]:
        """The epochs' weight files that are there, in order."""
        if not self.epochs.is_dir():
            return []
        return sorted(p for p in self.epochs.glob(EPOCH_FILES) if p.is_file())

    def run_files(self) -> list[Path]:
        """The entries of a run that are there: ``model.safetensors`` and ``resume.pt`` whatever their kind
        (a file, a folder, a link, a pipe), and ``epochs/`` if it holds anything but this package's own
        temporary files (or is not a folder). The lock file and anything else in the folder do not count."""
        present = [p for p in (self.weights, self.resume) if p.exists() or p.is_symlink()]
        if self.epochs.is_dir():
            if self._epochs_entries() != 0:  # an unreadable folder counts too: it cannot be checked
                present.append(self.epochs)
        elif self.epochs.exists() or self.epochs.is_symlink():
            present.append(self.epochs)
        return present

    def _epochs_entries(self) -> int | None:
        """How many entries ``epochs/`` holds besides the package's own temporary files; None if it cannot be read."""
        try:
            return sum(1 for p in self.epochs.iterdir() if not is_own_temporary(p))
        except OSError:
            return None

    def describe(self, paths: list[Path]) -> str:
        """``paths`` as a reader wants them listed: relative names, and ``epochs/`` with what it holds."""
        names = []
        for path in paths:
            if path == self.epochs and path.is_dir():
                count = self._epochs_entries()
                held = "unreadable" if count is None else f"{count} file{'s' if count != 1 else ''}"
                names.append(f"{EPOCHS_DIR}/ ({held})")
            else:
                names.append(path.name + ("/" if path.is_dir() else ""))
        return ", ".join(names)

    def resumable(self) -> bool:
        """Whether ``resume.pt`` is a regular file (or a link to one): a pipe or a folder is never opened."""
        return self.resume.is_file()

    def resume_problem(self) -> str:
        """Why ``resume.pt`` cannot be read, in words (empty when it is a regular file)."""
        if self.resume.is_file():
            return ""
        if self.resume.is_symlink() and not self.resume.exists():
            return f"{RESUME_FILE} is a broken symbolic link"
        if self.resume.is_dir():
            return f"{RESUME_FILE} is a folder, not a file"
        if self.resume.exists():
            return f"{RESUME_FILE} is not a regular file"
        return f"{RESUME_FILE} is missing"

    def saved_epoch(self) -> int | None:
        """The epoch that ``train(..., resume=True)`` would continue from, or None if there is none."""
        if not self.resumable():  # is_file() only stats: a pipe there would block a reader forever
            return None
        from ddpm_core.training.resume import load_resume_state  # torch and safetensors, only when there is a file

        try:
            return int(load_resume_state(self.resume)["epoch"])
        except (OSError, DDPMError):
            return None

    def sampling_checkpoint(self) -> Path | None:
        """A weights file of the run that ``sample --checkpoint`` can load: model.safetensors, else the last epoch's."""
        if self.weights.is_file():
            return self.weights
        epochs = self.epoch_files()
        return epochs[-1] if epochs else None

    def check_start(self, resume: bool) -> None:
        """Refuse, before anything is loaded, a folder whose files this run would overwrite or mix with its own.

        A new run starts only in a folder without any run's files; a resumed run only where ``resume.pt``
        is a regular file (a pipe or a folder of that name is never opened).
        """
        present = self.run_files()
        if self.resumable():
            if not resume:
                epoch = self.saved_epoch()
                saved = f"{epoch} epoch{'s' if epoch != 1 else ''} saved: " if epoch is not None else ""
                raise DDPMError(
                    f"{self.path} already holds a training run. Pass --resume (resume=True) to continue it "
                    f"({saved}{self.describe(present)}), or choose another --out folder; nothing was overwritten."
                )
            # What a checkpoint replaces must be a file (or a link, which is replaced itself), and epochs/ a folder.
            blocking = [p for p in (self.weights,) if p.exists() and not p.is_file()]
            blocking += [self.epochs] if self.epochs.exists() and not self.epochs.is_dir() else []
            if blocking:
                names = ", ".join(str(p) for p in blocking)
                raise DDPMError(
                    f"The run in {self.path} cannot save its checkpoints: {names} should be "
                    f"{'a file' if blocking[0] == self.weights else 'a folder'} but is something else. Move it out of "
                    f"{self.path}, then resume again; nothing was changed."
                )
            return
        if present:
            checkpoint = self.sampling_checkpoint()
            weights = (f" Its weights stay usable for sampling: pass --checkpoint {checkpoint} to "
                       f"`python -m ddpm_core sample`." if checkpoint is not None else "")
            raise DDPMError(
                f"{self.path} holds files of an earlier training run ({self.describe(present)}), but "
                f"{self.resume_problem()}, so that run cannot be continued{' with --resume' if resume else ''}: "
                f"{RESUME_FILE} holds the optimiser and random-number states that continuing needs.{weights} Start a "
                f"new run in another --out folder, or move those files out of {self.path} to start one there; "
                f"nothing was overwritten."
            )
        if resume:
            raise DDPMError(
                f"Nothing to resume in {self.path}: {self.resume_problem()}, and no other file of a training run is "
                f"there. Drop --resume (resume=False) to start a new run there."
            )

    def remove_own_temporaries(self) -> list[Path]:
        """Delete the temporary files a killed write of this package left here and in ``epochs/``; nothing else.

        Only safe under the run's lock: then no other process is writing into the folder.
        """
        return [*remove_own_temporaries(self.path), *remove_own_temporaries(self.epochs)]
