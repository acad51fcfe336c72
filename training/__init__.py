"""Training of the project's own plate detector (``beamplate``): data, augmentation, model,
training loop and ONNX export. Never imported by ``beam_anon`` at run time; needs the packages of
``training/requirements.txt`` (PyTorch, CPU build) on top of the runtime's. See
``docs/model_beamplate.md`` for the one command that trains and exports the shipped model.

**CPU kernels.** PyTorch runs the convolutions through oneDNN, which picks its kernels by the
CPU's instruction set, and kernels for different instruction sets add in different orders: the
same command gave other weights with AVX-512 kernels than with AVX2 ones (epoch 1's heatmap loss
2.7656 vs 2.8042; after 16 epochs street validation 0.648 vs 0.662). Importing this package
therefore caps oneDNN at :data:`CPU_KERNELS` (``ONEDNN_MAX_CPU_ISA``, read when oneDNN first
runs) unless that variable is already set: by default the instruction set the shipped weights
were trained with. Capped so, a run on another machine with that instruction set gives the same
weights bit for bit (shown: this AVX-512 machine capped at AVX2 re-made an AVX2 machine's
earlier weights byte for byte). A CPU without it cannot; :func:`kernel_note` warns.
``ATEN_CPU_CAPABILITY`` changed nothing in the results, the cap nothing in speed here.
"""
from __future__ import annotations

import os

#: oneDNN's instruction set for training runs (``ONEDNN_MAX_CPU_ISA``): the shipped weights'
SHIPPED_KERNELS = "AVX512_CORE"
CPU_KERNELS = os.environ.setdefault("ONEDNN_MAX_CPU_ISA", SHIPPED_KERNELS)


def kernel_note() -> str:
    """One line for the start of a run: the oneDNN instruction set it is capped at, what this
    CPU offers, and a warning when the run cannot reproduce the shipped weights (another cap,
    or a CPU without that instruction set)."""
    import torch

    has = torch.backends.cpu.get_cpu_capability()   # 'AVX512', 'AVX2', 'DEFAULT', ...
    rank = {"AVX2": 1, "AVX512": 2}
    need = "AVX512" if SHIPPED_KERNELS.upper().startswith("AVX512") else "AVX2"
    note = f"oneDNN kernels: ONEDNN_MAX_CPU_ISA={CPU_KERNELS} (this CPU: {has})"
    if CPU_KERNELS.upper() != SHIPPED_KERNELS or rank.get(has.upper(), 0) < rank[need]:
        note += (f": WARNING the shipped weights were trained with {SHIPPED_KERNELS} kernels; "
                 "this run's weights will differ from them (docs/model_beamplate.md)")
    return note


def start_run(out: str, threads: int, seed: int) -> None:
    """The start of every training command: torch's threads and seed set, :func:`kernel_note`
    printed, the run folder ``out`` made."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    print(kernel_note(), flush=True)
    os.makedirs(out, exist_ok=True)
