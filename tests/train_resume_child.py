"""The run that tests/test_train_resume.py kills with SIGKILL and resumes.

    python -m tests.train_resume_child CHECKPOINT OUT STORE     (or main() in a forked process)

Trains with everything a checkpoint must carry — Adam's moments, a cosine
schedule, a weight EMA, dropout (the RNG), the data order — checkpointing
every 3 steps, and prints ``CKPT <step>`` after each checkpoint. Steps are
slowed down a little so that a kill lands mid-epoch. Run again, it resumes
from the checkpoint; at the end it saves the final weights to OUT and the
history to OUT.json.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from optimlab import optim
from optimlab import schedules as S
from optimlab.train import fit
from tests.train_synth import blobs

EPOCHS, BATCH = 3, 32  # 16 steps per epoch


def build() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    return model, optim.create("adam", model.parameters(), lr=1e-2)


def train(model, opt, data=None, **kwargs):
    train_data, val = blobs()
    return fit(model, opt, train_data if data is None else data, val=val, epochs=EPOCHS, batch_size=BATCH,
               seed=5, schedule=S.CosineAnnealing(1e-2, period=EPOCHS * 16), ema=0.9, sample_every=4,
               quiet=True, **kwargs)


class Report:
    def __init__(self, send=None):
        self.send = send or (lambda step: print(f"CKPT {step}", flush=True))

    def on_checkpoint(self, trainer, path):
        self.send(trainer.step)

    def on_step_end(self, trainer):
        time.sleep(0.02)


def main(checkpoint: str, out: str, store: str, send=None) -> None:
    """Train (resuming from ``checkpoint`` if it exists); ``send(step)`` after each checkpoint
    (default: print ``CKPT <step>``)."""
    torch.set_num_threads(1)
    model, opt = build()
    history = train(model, opt, checkpoint=checkpoint, checkpoint_every=3, resume=True, store=store,
                    callbacks=[Report(send)])
    torch.save(model.state_dict(), out)
    with open(out + ".json", "w") as f:
        f.write(history.to_json())
    print("DONE", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
