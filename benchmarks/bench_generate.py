"""Sampling speed: ``Generator.generate`` vs a plain diffusers loop on the same UNet.

The plain loop is the canonical classifier-free-guidance loop of the diffusers docs:
``scheduler.set_timesteps``, then per step one ``unet(...).sample`` on the doubled
(conditional + unconditional) batch, the guidance mix and ``scheduler.step``, then the
images as PIL. Both use the same scheduler (DDIM, trailing spacing), the same n, steps,
guidance and conditioning tokens. Repeats alternate between the two so that load from
other processes hits both alike; the median of the per-pair time ratios is reported::

    python benchmarks/bench_generate.py                       # diffusion-test-tiny, random weights
    python benchmarks/bench_generate.py --model diffusion-small --repeats 3
    python benchmarks/bench_generate.py --model /path/to/run/model --no-write

Writes docs/bench/generate.json and the "Generation speed" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from shoplens.generate.pipeline import Generator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # benchmarks/common.py, next to this script

HEADING = "## Generation speed"
TARGET = 1.1  # Generator.generate may take at most 1.1x the plain loop's time
JSON = common.DOCS / "bench" / "generate.json"


def load_generator(spec: str) -> Generator:
    """A model folder / registered name, or a model config name built with random weights
    (speed does not depend on the weights)."""
    from shoplens.registry import create_model, list_models

    if spec in list_models():
        torch.manual_seed(0)
        return Generator(create_model(spec), f"{spec} (random weights)")
    return Generator.load(spec)


def plain_loop(gen: Generator, n: int, steps: int, guidance: float, seed: int) -> list[Any]:
    """The diffusers-docs sampling loop on ``gen``'s UNet (no shoplens code per step)."""
    from diffusers import DDIMScheduler

    model = gen.model
    cfg = model.cfg
    sched = DDIMScheduler.from_config(model.noise_scheduler.config, timestep_spacing="trailing")
    cond = gen.conditioning(category=gen.categories[0])  # (1, 3, D)
    emb = torch.cat([cond.expand(n, -1, -1), model.null_like(cond).expand(n, -1, -1)])
    pooled = emb.mean(dim=1) if cfg.global_cond else None  # (2n, D)
    g = torch.Generator().manual_seed(seed)
    shape = (n, cfg.in_channels, cfg.image_size, cfg.image_size)
    latents = torch.randn(shape, generator=g) * sched.init_noise_sigma
    sched.set_timesteps(steps)
    with torch.no_grad():
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([latents] * 2), t)
            noise_pred = model.unet(inp, t, encoder_hidden_states=emb, class_labels=pooled).sample
            cond_pred, uncond_pred = noise_pred.chunk(2)
            noise_pred = uncond_pred + guidance * (cond_pred - uncond_pred)
            latents = sched.step(noise_pred, t, latents).prev_sample
    images = (latents / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).squeeze(-1).numpy()
    return [Image.fromarray((im * 255).round().astype("uint8")).convert("RGB") for im in images]


def shoplens_loop(gen: Generator, n: int, steps: int, guidance: float, seed: int) -> list[Any]:
    return gen.generate(
        n=n, category=gen.categories[0], guidance=guidance, steps=steps, seed=seed
    )  # fmt: skip


def measure(gen: Generator, n: int, steps: int, guidance: float, repeats: int) -> dict[str, Any]:
    """Interleaved repeats (after one warm-up each): wall and CPU seconds per call.

    CPU seconds of this process are reported too: on a machine shared with other work the
    wall clock of a call depends on who else runs, its CPU time much less.
    """
    loops = {"plain": plain_loop, "shoplens": shoplens_loop}
    for fn in loops.values():
        fn(gen, n, steps, guidance, 0)  # warm-up
    runs: dict[str, list[float]] = {"plain": [], "shoplens": []}
    cpu: dict[str, list[float]] = {"plain": [], "shoplens": []}
    for r in range(repeats):
        for name in ("plain", "shoplens") if r % 2 == 0 else ("shoplens", "plain"):
            start, start_cpu = time.perf_counter(), time.process_time()
            loops[name](gen, n, steps, guidance, r)
            runs[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    ratios = [s / p for s, p in zip(runs["shoplens"], runs["plain"], strict=True)]
    cpu_ratios = [s / p for s, p in zip(cpu["shoplens"], cpu["plain"], strict=True)]
    return {
        "runs_s": runs,
        "cpu_s": cpu,
        "median_s": {k: statistics.median(v) for k, v in runs.items()},
        "median_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
        "ratio_median": statistics.median(ratios),
        "ratio_each": ratios,
        "cpu_ratio_median": statistics.median(cpu_ratios),
    }


def render(result: dict[str, Any], setup: dict[str, Any], load: float) -> str:
    m, c = result["median_s"], result["median_cpu_s"]
    verdict = "meets" if result["cpu_ratio_median"] <= TARGET else "misses"
    line = common.measured_line(
        "bench_generate.py",
        f"{setup['threads']} torch threads",
        f"torch {torch.__version__}, diffusers {setup['diffusers']}",
        load,
    )
    return "\n".join(
        [
            HEADING,
            "",
            line,
            "",
            f"Model `{setup['model']}`, n={setup['n']}, {setup['steps']} DDIM steps, guidance "
            f"{setup['guidance']} (conditional and unconditional halves in one UNet call), "
            f"{setup['repeats']} interleaved repeats after a warm-up.",
            "",
            "| loop | median wall time per call | per image | median CPU time per call |",
            "|---|---|---|---|",
            f"| plain diffusers loop | {m['plain']:.2f} s | {m['plain'] / setup['n']:.3f} s "
            f"| {c['plain']:.2f} s |",
            f"| `Generator.generate` | {m['shoplens']:.2f} s | "
            f"{m['shoplens'] / setup['n']:.3f} s | {c['shoplens']:.2f} s |",
            "",
            f"`Generator.generate` takes **{result['cpu_ratio_median']:.3f}x** the plain "
            f"loop's CPU time (median of the per-pair ratios); the target is <= {TARGET}x, "
            f"which it {verdict}. Wall-clock ratio {result['ratio_median']:.3f}x (per pair: "
            f"{', '.join(f'{r:.2f}' for r in result['ratio_each'])}): on a machine shared with "
            "other work the wall clock of one call depends on what else runs, so the CPU time "
            "of this process (one torch thread) is the measure. The extra work is input "
            "checks, the conditioning tokens, per-image noise generators (so each image can be "
            "reproduced alone) and the provenance record.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="diffusion-test-tiny")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import diffusers

    torch.set_num_threads(args.threads)
    gen = load_generator(args.model)
    load = common.load_average()
    result = measure(gen, args.n, args.steps, args.guidance, args.repeats)
    setup = {
        "model": gen.name,
        "n": args.n,
        "steps": args.steps,
        "guidance": args.guidance,
        "repeats": args.repeats,
        "threads": args.threads,
        "diffusers": diffusers.__version__,
        "scheduler": "ddim",
    }
    section = render(result, setup, max(load, common.load_average()))
    print(section)
    if not args.no_write:
        data = {"setup": setup, "machine": common.machine(), "load_average": load, **result}
        data["target_ratio"] = TARGET
        common.write_json(JSON, data)
        common.write_section(common.DOC, section)


if __name__ == "__main__":
    main()
