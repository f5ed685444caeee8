"""Every case of the command line's robustness audit, run against the committed checkpoints: exit status and message.

Each case is a careless or hostile use of ``python -m ddpm_core``: a file it must not overwrite, a hostile
checkpoint, a setting out of range, a broken launch environment. The script runs them in a scratch folder
and prints, for each, the exit status, whether a traceback appeared, and the message (argparse's error
line, or the first lines of the package's paragraph); where a file must survive, whether its SHA-256 is
unchanged. The unit tests (``tests/robustness/``) assert the same; this is the list a person reads::

    DDPM_DATA_DIR=../shared/data python -m tools.audit_cases
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from ddpm_core.measure.classifier import DEFAULT_PATH as JUDGE
from ddpm_core.training.checkpoint import read_metadata

REPO = Path(__file__).resolve().parents[1]
U = REPO / "book" / "checkpoints" / "ddpm_mnist.safetensors"
C = REPO / "book" / "checkpoints" / "ddpm_mnist_conditional.safetensors"
TINY = ["--channels", "8,8,16", "--time-embed-dim", "16", "--batch-size", "64", "--lr-decay", "constant",
        "--no-progress", "--subset", "256"]
FAST = ["--num-samples", "2", "--sampler", "ddim", "--steps", "2", "--no-progress"]


class Audit:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def run(self, case: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        done = subprocess.run([sys.executable, "-m", "ddpm_core", *argv], cwd=self.folder, capture_output=True,
                              text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})})
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if "error:" in line]  # argparse prints its usage first
        message = " ".join(errors[-1:] or lines)[:300] or done.stdout.strip().splitlines()[-1][:300]
        traceback = " TRACEBACK" if "Traceback" in done.stderr else ""
        print(f"- {case}: exit {done.returncode}{traceback}; {message}")

    def path(self, name: str) -> Path:
        return self.folder / name


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_loss(a: Audit) -> None:
    a.path("package.json").write_text('{"name": "someone-elses"}\n')
    before = sha(a.path("package.json"))
    a.run("export --out package.onnx beside a foreign package.json",
          ["export", "--checkpoint", str(U), "--out", "package.onnx"])
    print(f"  package.json unchanged: {sha(a.path('package.json')) == before}")
    a.run("export --out d/seeds.onnx --seeds 3", ["export", "--checkpoint", str(U), "--out", "d/seeds.onnx",
                                                  "--seeds", "3"])
    a.path("old.npy").write_bytes(b"the user's array")
    before = sha(a.path("old.npy"))
    a.run("sample --out old.npy, which exists", ["sample", "--checkpoint", str(U), "--out", "old.npy", *FAST])
    print(f"  old.npy unchanged: {sha(a.path('old.npy')) == before}")
    a.path("target.txt").write_text("keep me")
    a.path("link.png").symlink_to(a.path("target.txt"))
    before = sha(a.path("target.txt"))
    a.run("sample --out link.png, a symbolic link", ["sample", "--checkpoint", str(U), "--out", "link.png", *FAST])
    a.run("the same with --force", ["sample", "--checkpoint", str(U), "--out", "link.png", "--force", *FAST])
    print(f"  target unchanged: {sha(a.path('target.txt')) == before}; "
          f"link.png replaced by a file: {not a.path('link.png').is_symlink()}")
    run1 = a.path("run1")
    a.run("train one epoch", ["train", "--out", str(run1), "--epochs", "1", *TINY])
    (run1 / ".notes.tmp").write_text("the user's notes")
    a.run("train again into that folder without --resume", ["train", "--out", str(run1), "--epochs", "1", *TINY])
    print(f"  .notes.tmp kept: {(run1 / '.notes.tmp').is_file()}")
    run2 = a.path("run2")
    a.run("train three epochs", ["train", "--out", str(run2), "--epochs", "3", *TINY])
    (run2 / "model.safetensors").rename(a.path("moved.safetensors"))
    (run2 / "resume.pt").unlink()
    before_epochs = {p.name: sha(p) for p in (run2 / "epochs").iterdir()}
    a.run("a new run into a folder holding only epochs/", ["train", "--out", str(run2), "--epochs", "1", *TINY])
    print(f"  epochs/ unchanged: {before_epochs == {p.name: sha(p) for p in (run2 / 'epochs').iterdir()}}")


def sparse_copy(source: Path, target: Path) -> None:
    """``source`` with one more tensor of 400 GB declared in its header: a sparse file, no disk used."""
    data = source.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    end = max(entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__")
    header["huge"] = {"dtype": "F32", "shape": [100_000_000_000], "data_offsets": [end, end + 400_000_000_000]}
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(target, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded + data[8 + length:])
        file.truncate(8 + len(encoded) + end + 400_000_000_000)


def tracebacks(a: Audit) -> None:
    weights = load_file(str(U))
    save_file(weights, str(a.path("deep.safetensors")), metadata={"ddpm_core": "[" * 200_000 + "]" * 200_000})
    for command in (["sample", "--out", "deep.png"], ["evaluate"], ["export", "--out", "deep.onnx"]):
        a.run(f"{command[0]} of 200,000-deep metadata",
              [command[0], "--checkpoint", str(a.path("deep.safetensors")), *command[1:]])
    judge = load_file(str(JUDGE))
    for metadata in ("[1]", '"str"'):
        save_file(judge, str(a.path("judge.safetensors")), metadata={"ddpm_core": metadata})
        a.run(f"evaluate --classifier with metadata {metadata}",
              ["evaluate", "--checkpoint", str(U), "--classifier", str(a.path("judge.safetensors"))])
    sparse_copy(U, a.path("sparse.safetensors"))
    a.run("sample from a sparse 400 GB file", ["sample", "--checkpoint", str(a.path("sparse.safetensors")),
                                               "--out", "s.png"])
    a.path("sparse.safetensors").unlink()
    for count in ("150000", "1000000000000"):
        a.run(f"export --seeds {count}", ["export", "--checkpoint", str(U), "--out", "e/m.onnx", "--seeds", count])
    print(f"  e/ created: {a.path('e').exists()}")
    a.run("train --batch-size 60000", ["train", "--out", str(a.path("big")), "--batch-size", "60000",
                                       "--no-progress"])
    a.run("RANK=abc train", ["train", "--out", str(a.path("r")), *TINY], env={"RANK": "abc"})
    a.run("RANK=1 WORLD_SIZE=2 train", ["train", "--out", str(a.path("r")), *TINY],
          env={"RANK": "1", "WORLD_SIZE": "2"})
    a.run("RANK=0 WORLD_SIZE=2, MASTER_* set, no second process", ["train", "--out", str(a.path("r")), *TINY],
          env={"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29917",
               "DDPM_RENDEZVOUS_TIMEOUT": "5"})


def messages(a: Audit) -> None:
    a.run("sample --guidance 1e300", ["sample", "--checkpoint", str(C), "--out", "g.png", "--label", "3",
                                      "--guidance", "1e300"])
    a.run("sample --noise-scale 1e300", ["sample", "--checkpoint", str(U), "--out", "n.png", "--noise-scale",
                                         "1e300"])
    a.run("a conditional model, --guidance 0 and no label", ["sample", "--checkpoint", str(C), "--out", "u.png",
                                                             "--guidance", "0", *FAST])
    run3 = a.path("run3")
    a.run("train one epoch", ["train", "--out", str(run3), "--epochs", "1", *TINY])
    (run3 / "resume.pt").unlink()
    a.run("resume.pt missing, without --resume", ["train", "--out", str(run3), "--epochs", "2", *TINY])
    a.run("resume.pt missing, with --resume", ["train", "--out", str(run3), "--epochs", "2", "--resume", *TINY])
    (run3 / "resume.pt").mkdir()
    a.run("resume.pt a folder, with --resume", ["train", "--out", str(run3), "--epochs", "2", "--resume", *TINY])
    missing = Path(tempfile.gettempdir()) / "ddpm-audit-nonexistent"
    a.run(f"evaluate with DDPM_DATA_DIR={missing}/data", ["evaluate", "--checkpoint", str(U)],
          env={"DDPM_DATA_DIR": str(missing / "data")})
    print(f"  {missing} created: {missing.exists()}")
    a.run("sample --out X.NPY", ["sample", "--checkpoint", str(U), "--out", "X.NPY", *FAST])
    print(f"  files: {sorted(p.name for p in a.folder.glob('X.NPY*'))}")
    a.run("train --subset 100000", ["train", "--out", str(a.path("sub")), "--subset", "100000", "--no-progress"])
    a.run("sample --labels 1,2,3,4 --num-samples 2", ["sample", "--checkpoint", str(C), "--out", "l.png",
                                                      "--labels", "1,2,3,4", "--num-samples", "2"])
    a.run("sample --labels 1,,,2,", ["sample", "--checkpoint", str(C), "--out", "l.png", "--labels", "1,,,2,"])
    a.run('train --out ""', ["train", "--out", ""])
    a.run("train --device cpu:7", ["train", "--out", str(a.path("dev")), "--device", "cpu:7"])
    a.run("train three epochs", ["train", "--out", str(a.path("r3")), "--epochs", "3", *TINY])
    a.run("resume that finished run with --epochs 2", ["train", "--out", str(a.path("r3")), "--epochs", "2",
                                                       "--resume", *TINY])
    a.run("export --out <a folder>", ["export", "--checkpoint", str(U), "--out", str(a.folder)])
    metadata = read_metadata(U)
    metadata["schedule"]["beta_start"] = 0.5
    save_file(load_file(str(U)), str(a.path("beta.safetensors")), metadata={"ddpm_core": json.dumps(metadata)})
    a.run("a checkpoint with impossible betas", ["sample", "--checkpoint", str(a.path("beta.safetensors")),
                                                 "--out", "b.png"])
    a.path("adir").mkdir()
    os.mkfifo(a.path("fifo"))
    a.run("--checkpoint <a folder without weights>", ["sample", "--checkpoint", str(a.path("adir")), "--out", "x.png"])
    a.run("--checkpoint <a FIFO>", ["sample", "--checkpoint", str(a.path("fifo")), "--out", "x.png"])
    a.run("resume an unconditional run with --conditional", ["train", "--out", str(a.path("r3")), "--epochs", "4",
                                                             "--resume", "--conditional", *TINY])


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="python -m tools.audit_cases", description=__doc__.splitlines()[0]).parse_args(argv)
    audit = Audit(Path(tempfile.mkdtemp(prefix="ddpm-audit-")))
    for title, section in (("Data loss", data_loss), ("Tracebacks", tracebacks), ("Messages", messages)):
        print(f"\n{title}")
        section(audit)


if __name__ == "__main__":
    main()
