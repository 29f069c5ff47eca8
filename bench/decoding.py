"""Decoding settings side by side on training-split turns (quality, not speed), so a setting is chosen
without looking at the dev turns its figures are reported on.

    python bench/decoding.py --run-dir DIR [--config cpu] [--turns 100] [--variants ecr,base]
        [--try "gen.decoding.repetition_penalty=1.2" --try "gen.decoding.do_sample=true gen.decoding.repetition_penalty=1.2"]

Every setting (the config's, then each --try: space-separated overrides) answers the same turns with each
variant (ECR's fine-tuned generator with retrieval; the untuned base with retrieval). Printed per row: Dist-1/2,
BLEU-2, item mentioned, hallucination rate (intervals over dialogues), mean words. Needs a run directory where
gen-train ran; responses go to DIR/bench/decoding/.
"""
import argparse
import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from ecr_ray.artifacts import POOL
from ecr_ray.config import load_config
from ecr_ray.rundir import RunDir

SHOWN = ("dist-1", "dist-2", "bleu-2", "item_mention_rate", "hallucination_rate", "mean_words")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--variants", default="ecr,base")
    parser.add_argument("--try", dest="tries", action="append", default=[], help="space-separated overrides: one more setting")
    args = parser.parse_args()
    import ray

    from ecr_ray.eval.generation import text_report
    from ecr_ray.gen.respond import dialogue_prompts, generate

    run_dir = RunDir(args.run_dir)
    settings = [""] + args.tries
    base_cfg = load_config(args.config, [f"gen.sample_size={args.turns}"])
    ray.init(address="local", num_cpus=base_cfg.ray.num_cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    prompts = dialogue_prompts(base_cfg, run_dir, POOL, split="train")
    lines = [f"{len(prompts)} training-split turns ({args.config}); intervals over dialogues",
             "| setting | variant | " + " | ".join(SHOWN) + " |", "|---|---|" + "---:|" * len(SHOWN)]
    for i, setting in enumerate(settings):
        cfg = load_config(args.config, [f"gen.sample_size={args.turns}", *setting.split()])
        for variant in args.variants.split(","):
            out = f"bench/decoding/{i}-{variant}"
            generate(cfg, run_dir, prompts, variant, out)
            m = text_report(cfg, run_dir, run_dir.read_table(out).to_pylist())
            cells = [f"{m[k]:.3f}" + (" [{:.3f}, {:.3f}]".format(*m["intervals"][k]) if k in m["intervals"] else "") for k in SHOWN]
            lines.append(f"| {setting or 'config'} | {variant} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    print("\n".join(lines))
    ray.shutdown()


if __name__ == "__main__":
    main()
