"""Where a conditional generator's variety within a class comes from: its style code or its condition.

Trains each model as ``penact generate`` trains it (the same seeds, so the same models) and reports
``Judges.variety_sources`` (``penact.generate.metrics``): per class, 10 conditions (penact:
``a ~ p(a | y)``; one-hot: the label) times 10 style codes decoded, and the judge's spread of them
over the style code (``style``), over the condition (``condition``, 0 for the one-hot models) and
over both (``both``: the report's diversity, up to sampling), relative to the real images'.

    python benchmarks/generate_diversity.py --dataset mnist --validation --seeds 1 \\
        --models vae-onehot,vae-labelled --threads 1 --no-progress

Takes ``penact generate``'s options (recipe, seeds, models, families) and prints a markdown table,
with each model's judge fidelity, Frechet distance (and its mean term, ``||m1 - m2||^2``) and
diversity as ``penact generate`` scores them (``per_class`` images of every class, the same draws).
"""
from __future__ import annotations

import argparse
import time

import torch

from penact._random import stream_seed
from penact.experiments import get_dataset
from penact.generate.metrics import frechet_terms
from penact.generate.cli import RECIPES, Split, _runs, _split, add_arguments, prepare_seed, resolve
from penact.generate.trainers import parse_model, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config, settings = resolve(args)
    data = get_dataset(args.dataset).load()
    split = Split(*(t.to(args.device) for t in _split(data, RECIPES[args.dataset].validation_size, args.validation)),
                  num_classes=data.num_classes)
    print("| seed | model | judge % | Frechet (mean term) | diversity | style | condition | both | CPU s (train, score) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seed in range(settings["seeds"]):
        setup = prepare_seed(args, settings, split, seed)
        for model, family in _runs(args.models, args.families):
            mode = parse_model(model)[1]
            started = time.process_time()
            result = train_model(model, setup.teacher, setup.spaces.get(family), split.train_images,
                                 None if mode == "free" else split.train_labels, config,
                                 seed=stream_seed(seed, model, family), progress=not args.no_progress)
            labels = torch.arange(split.num_classes, device=args.device).repeat_interleave(settings["per_class"])
            images = result.generator.generate(labels, torch.Generator().manual_seed(
                stream_seed(seed, model, family, "evaluate")))
            scores = setup.judges.score(images, labels)
            with torch.no_grad():
                shift, _ = frechet_terms(setup.judges.judge.features(images), setup.judges.real_features)
            spreads = setup.judges.variety_sources(
                result.generator, torch.Generator().manual_seed(stream_seed(seed, model, family, "diversity")))
            label = model if family is None else f"{model} ({family})"
            print(f"| {seed} | {label} | {100 * scores.judge_fidelity:.1f} | {scores.frechet:.2f} ({shift:.2f}) "
                  f"| {scores.diversity:.2f} | {spreads['style']:.2f} | {spreads['condition']:.2f} | {spreads['both']:.2f} "
                  f"| {time.process_time() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
