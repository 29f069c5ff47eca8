"""The simulated seeker's decoding engines, each against the shipped one (`sim.seeker.LocalChat`: eager, dynamic
KV cache, the dtype `precision.inference_dtype` picks) in the same run.

Needs a run directory where emotion inference ran (the personas read the classifier's emotions):

    python bench/seeker.py --run-dir DIR [--config cpu] [--batch 15] [--tokens 48]

Two batches of first-round seeker prompts (free and attribute mode: other prompts, other lengths), greedy, decoded by
  eager            the shipped engine
  eager fp32       the same in float32 (only where the shipped dtype is bf16)
  static           transformers' static KV cache, eager
  static+compile   the static cache with `generate`'s torch.compile (inductor; its first batch compiles)
  ctranslate2      the model converted to CTranslate2 (float32), if the package is installed
Printed per engine: seconds of each batch, new tokens per second on the second batch, eager's seconds over its
seconds on that batch (the engines count a stop token differently, so the ratio is of time), and whether its text
equals eager's; for eager, the share of the second batch spent reading the prompts.
"""
import argparse
import os
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from ecr_ray.config import load_config
from ecr_ray.rundir import RunDir


def prompts(cfg, run_dir, batch: int) -> list[list[list[dict]]]:
    """Two batches of the first round's chats: the free mode's, then the attribute mode's."""
    from ecr_ray.sim.persona import personas
    from ecr_ray.sim.seeker import persona_prompt, seeker_instruction

    people = personas(cfg, run_dir)[:batch]
    return [[[{"role": "system", "content": persona_prompt(p)},
              {"role": "user", "content": "You start the conversation.\n\n" + seeker_instruction(p, mode, 1, None)}] for p in people]
            for mode in ("free", "attribute")]


def decode(tokenizer, model, chats, tokens: int, **generate) -> tuple[float, int, list[str]]:
    import torch

    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    ids = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    began = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id, **generate)
    seconds = time.perf_counter() - began
    new = out[:, ids["input_ids"].shape[1]:]
    return seconds, int((new != tokenizer.pad_token_id).sum()), tokenizer.batch_decode(new, skip_special_tokens=True)


def ct2_decode(tokenizer, generator, chats, tokens: int) -> tuple[float, int, list[str]]:
    """The same greedy decoding through a CTranslate2 generator (its own batching and KV cache)."""
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    prompts = [tokenizer.convert_ids_to_tokens(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    began = time.perf_counter()
    out = generator.generate_batch(prompts, max_length=tokens, sampling_topk=1, include_prompt_in_result=False,
                                   end_token=[tokenizer.eos_token, "<|im_end|>"])
    seconds = time.perf_counter() - began
    ids = [r.sequences_ids[0] for r in out]
    return seconds, sum(len(i) for i in ids), tokenizer.batch_decode(ids, skip_special_tokens=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--batch", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    import torch
    from transformers import CompileConfig

    from ecr_ray.models import load_instruct_lm
    from ecr_ray.run_report import machine_line

    cfg = load_config(args.config)
    batches = prompts(cfg, RunDir(args.run_dir), args.batch)
    tokenizer, model = load_instruct_lm(cfg.sim.llm.model, threads=args.threads, padding_side="left")
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    shipped = model.dtype
    compiled = CompileConfig(mode="default", dynamic=False)
    compiled._compile_all_devices = True  # transformers compiles on GPUs only unless told
    engines = {"eager": {}, **({"eager fp32": {"dtype": torch.float32}} if shipped != torch.float32 else {}),
               "static": {"cache_implementation": "static"}, "static+compile": {"cache_implementation": "static", "compile_config": compiled}}
    print(f"{cfg.sim.llm.model} ({shipped}), {args.batch} prompts a batch, {args.tokens} new tokens, greedy, {args.threads} threads; "
          f"{machine_line()}", flush=True)
    base = None
    for name, engine in engines.items():
        model.to(engine.pop("dtype", shipped))
        runs = [decode(tokenizer, model, chats, args.tokens, **engine) for chats in batches]
        (first, _, _), (second, tokens, texts) = runs
        base = base or (second, texts)
        same = sum(a == b for a, b in zip(texts, base[1]))
        print(f"{name:>15}: batch 1 {first:6.1f} s, batch 2 {second:6.1f} s, {tokens / second:6.1f} new tokens/s, "
              f"x{base[0] / second:.2f} eager's speed; text as eager's in {same}/{len(texts)}", flush=True)
        if name == "eager":  # how much of a batch is reading the prompts (what a cached prompt prefix would save)
            prefill = decode(tokenizer, model, batches[1], 1, **engine)[0]
            print(f"{'':>15}  of batch 2, the prompts' prefill (one new token) {prefill:.1f} s ({prefill / second:.0%})", flush=True)


    try:
        import ctranslate2
    except ImportError:
        print("ctranslate2 is not installed: its engine is not measured", flush=True)
        return
    import tempfile

    from ecr_ray.models import resolve_model

    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        ctranslate2.converters.TransformersConverter(str(resolve_model(cfg.sim.llm.model))).convert(folder, quantization="float32", force=True)
        converted = time.perf_counter() - began
        generator = ctranslate2.Generator(folder, device="cpu", intra_threads=args.threads)
        (first, _, _), (second, tokens, texts) = [ct2_decode(tokenizer, generator, chats, args.tokens) for chats in batches]
        same = sum(a == b for a, b in zip(texts, base[1]))
        print(f"{'ctranslate2':>15}: batch 1 {first:6.1f} s, batch 2 {second:6.1f} s, {tokens / second:6.1f} new tokens/s, x{base[0] / second:.2f} eager's speed; "
              f"text as eager's in {same}/{len(texts)} (float32; converting the model took {converted:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
