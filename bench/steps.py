"""Where the cpu run's stage time went, one step at a time: each case times the same work the older way
(the baseline) and the way the stages run now, in one process, one after the other, and prints the ratio.

    python bench/steps.py teacher|lora|infer|decode|all --run-dir DIR [--steps N]

Needs a run directory of the cpu preset (`ecr-ray run --config cpu --run-dir DIR`):

- teacher: training steps of the GoEmotions teacher (batches of 32, MiniLM): one torch thread (what a 1-CPU
  Ray Train worker gets), then two; AdamW unfused, then fused; batches in data order, then regrouped by length;
- lora: training steps of the LoRA generator (8 review examples): float32, then bfloat16 autocast;
- infer: the emotion classifier over 2,048 user utterances, 64 at a time: in their order, then sorted by length;
- decode: 16 dev prompts x the preset's candidates: float32 weights, then bfloat16 (`gen.decoding.batch_bf16`).
"""
import argparse
import random
import time
import warnings

import torch

from ecr_ray.artifacts import CLASSIFIER, GENERATOR, POOL, model, prepared, responses
from ecr_ray.config import load_config
from ecr_ray.rundir import RunDir

warnings.filterwarnings("ignore")


def timed(fn, repeats: int) -> float:
    """Seconds per call of `fn`, after one call to warm up."""
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def in_order(n: int, size: int) -> list[list[int]]:
    """Indices 0..n-1 in chunks of `size`, as they come (the baseline to `by_length`)."""
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def show(what: str, unit: str, results: list[tuple[str, float]]) -> None:
    base = results[0][1]
    print(f"\n{what}", flush=True)
    for name, seconds in results:
        print(f"  {name:<44} {seconds:8.3f} {unit}   x{base / seconds:.2f}", flush=True)


def teacher(cfg, run, steps):
    from ecr_ray.emotion.classifier import build_classifier, by_length, encode
    from ecr_ray.emotion.labels import multi_hot, read_goemotions

    tc = cfg.emotion.teacher
    rows = read_goemotions(cfg.data.path(cfg.emotion.goemotions_dir), "train")[: steps * tc.train.batch_size]
    texts, targets = [r["text"] for r in rows], torch.tensor([multi_hot(r["labels"]) for r in rows], dtype=torch.float32)
    size = tc.train.batch_size
    by_len = by_length(texts, size)
    random.Random(0).shuffle(by_len)

    def run_steps(threads: int, fused: bool, chunks) -> float:
        torch.set_num_threads(threads)
        classifier, tokenizer = build_classifier(tc)
        optimizer = torch.optim.AdamW(classifier.parameters(), lr=tc.train.lr, fused=fused)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        start = None
        for i, chunk in enumerate(chunks):
            if i == 1:
                start = time.perf_counter()  # the first step warms up
            loss = loss_fn(classifier(**encode(tokenizer, [texts[j] for j in chunk], tc.max_length)), targets[chunk])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / (len(chunks) - 1)

    show(f"teacher training step ({size} GoEmotions comments, MiniLM, {steps} steps)", "s/step", [
        ("1 thread, AdamW, data order (before)", run_steps(1, False, in_order(len(rows), size))),
        ("2 threads", run_steps(2, False, in_order(len(rows), size))),
        ("2 threads, fused AdamW", run_steps(2, True, in_order(len(rows), size))),
        ("2 threads, fused AdamW, length buckets (now)", run_steps(2, True, by_len))])


def lora(cfg, run, steps):
    from ecr_ray.gen.model import build_generator
    from ecr_ray.gen.train import autocast, collate, training_examples
    from ecr_ray.raytools import adamw

    g = cfg.gen.generator
    torch.set_num_threads(2)
    train, _, _ = training_examples(cfg, run, True)
    generator, tokenizer = build_generator(g)
    optimizer = adamw([p for p in generator.parameters() if p.requires_grad], g.train)  # the stage's optimiser
    batches = [collate({k: [r[k] for r in train[i:i + g.train.batch_size]] for k in ("input_ids", "labels")}, tokenizer.pad_token_id)
               for i in range(0, steps * g.train.batch_size, g.train.batch_size)]

    def run_steps(bf16: bool) -> float:
        def one():
            for batch in batches:
                with autocast("cpu", bf16):
                    loss = generator(**batch).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return timed(one, 1) / len(batches)

    show(f"LoRA generator training step ({g.train.batch_size} examples <= {g.max_length} tokens, {steps} steps)", "s/step",
         [("float32 (before)", run_steps(False)), ("bfloat16 autocast (now)", run_steps(True))])


def infer(cfg, run, steps):
    from ecr_ray.emotion.classifier import by_length, encode
    from ecr_ray.emotion.infer import EmotionPredictor

    torch.set_num_threads(2)
    texts = run.read_table(prepared(POOL, "user_utterances"), columns=["text"]).column("text").to_pylist()[:2048]
    predictor = EmotionPredictor(run.local_copy(model(CLASSIFIER)), cfg.emotion.second_label_threshold)

    def over(chunks):
        def one():
            with torch.no_grad():
                for chunk in chunks:
                    predictor.model(**encode(predictor.tokenizer, [texts[i] for i in chunk], predictor.max_length))
        return one

    size = predictor.batch_size
    show(f"emotion inference ({len(texts)} user utterances, {size} a pass)", "s", [
        ("in their order (before)", timed(over(in_order(len(texts), size)), 1)),
        ("sorted by length (now)", timed(over(by_length(texts, size)), 1))])


def decode(cfg, run, steps):
    from ecr_ray.gen.generate import ResponseGenerator

    g = cfg.gen
    rows = [{**r, "knowledge": {"entities": r["entities"], "triples": r["triples"]}}
            for r in run.read_table(responses("ecr", POOL)).to_pylist()[:16]]

    def seconds(bf16: bool) -> float:
        generator = ResponseGenerator(run.local_copy(model(GENERATOR)), g.generator, g.decoding, True, threads=2,
                                      kg_dir=cfg.data.path(cfg.data.kg_dir), bf16=bf16)
        start = time.perf_counter()
        generator.respond(rows)
        return time.perf_counter() - start

    show(f"batch decoding ({len(rows)} dev prompts x {g.decoding.candidates} candidates, <= {g.decoding.max_new_tokens} tokens)", "s",
         [("float32 weights", seconds(False)), ("bfloat16 weights (now)", seconds(True))])


CASES = {"teacher": teacher, "lora": lora, "infer": infer, "decode": decode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=[*CASES, "all"])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--steps", type=int, default=16, help="training steps per variant (teacher, lora: at least 2)")
    args = parser.parse_args()
    cfg, run = load_config("cpu"), RunDir(args.run_dir)
    for name in CASES if args.what == "all" else [args.what]:
        CASES[name](cfg, run, max(2, args.steps if name == "teacher" else args.steps // 4))


if __name__ == "__main__":
    main()
