"""LeNet-5's weight layout on the CPU: channels-last (what ``penact.models`` builds) against the
default contiguous layout, on the three loops the MNIST distillation benchmark spends its time in.

- ``teacher epoch``: ``train_classifier`` on 2,048 images, batch 256 (DAFL's recipe);
- ``distill step``: one synthesized-pool step of LeNet-5-half taught by LeNet-5 at batch 256 (pool
  images translated, the teacher's logits on them, the student's KD loss, backward, Adam);
- ``synthesis step``: one Adam step of 256 images on the teacher's activation match.

Both layouts run in one process, interleaved round by round; the table gives each one's best round
and the ratio channels-last / contiguous (below 1: channels-last is faster).

    python benchmarks/bench_layout.py --threads 1 --rounds 5
"""
import argparse
import time

import torch

from penact.distill import kd_loss, random_translate
from penact.models import lenet5, lenet5_half, train_classifier

LAYOUTS = {"contiguous": torch.contiguous_format, "channels-last": torch.channels_last}


def measure(layout: torch.memory_format, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Seconds of one teacher epoch, one distillation step and one synthesis step in ``layout``."""
    generator = torch.Generator().manual_seed(0)
    teacher = lenet5().to(memory_format=layout)
    start = time.perf_counter()
    train_classifier(teacher, images, labels, 1, batch_size=256, lr=1e-3, progress=False)
    seconds = {"teacher epoch": time.perf_counter() - start}
    teacher.eval().requires_grad_(False)

    student = lenet5_half().to(memory_format=layout)
    optimizer = torch.optim.Adam(student.parameters(), lr=2e-3)
    batch = images[:256]
    start = time.perf_counter()
    for _ in range(10):
        shifted = random_translate(batch, 2, generator)
        with torch.no_grad():
            teacher_logits = teacher(shifted)
        loss = kd_loss(student(shifted), teacher_logits, 4.0).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds["distill step"] = (time.perf_counter() - start) / 10

    logits = batch.clone().requires_grad_(True)
    synthesis = torch.optim.Adam([logits], lr=0.1)
    target = torch.rand(256, teacher.fc.in_features)
    start = time.perf_counter()
    for _ in range(5):
        loss = (teacher.features(torch.sigmoid(logits)) - target).square().mean()
        synthesis.zero_grad(set_to_none=True)
        loss.backward()
        synthesis.step()
    seconds["synthesis step"] = (time.perf_counter() - start) / 5
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images, labels = torch.rand(2048, 1, 28, 28), torch.randint(0, 10, (2048,))
    best: dict[str, dict[str, float]] = {name: {} for name in LAYOUTS}
    for _ in range(args.rounds):
        for name, layout in LAYOUTS.items():
            for loop, seconds in measure(layout, images, labels).items():
                best[name][loop] = min(seconds, best[name].get(loop, float("inf")))
    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.rounds} interleaved rounds")
    print("| loop | contiguous ms | channels-last ms | ratio |")
    print("|---|---|---|---|")
    for loop in best["contiguous"]:
        old, new = best["contiguous"][loop], best["channels-last"][loop]
        print(f"| {loop} | {1e3 * old:.1f} | {1e3 * new:.1f} | {new / old:.2f} |")


if __name__ == "__main__":
    main()
