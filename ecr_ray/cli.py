"""`ecr-ray run|prepare|evaluate|ablations|compare|judge-check|simulate|audit|chat|results|config` — one parser shared by every subcommand."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ecr_ray.config import ConfigError, describe, describe_markdown, load_config

OPTIONAL = {"ablations": "rec-ablations", "compare": "gen-compare", "judge-check": "judge-check", "simulate": "simulate"}  # commands that run an optional stage


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="tiny", help="preset name in configs/ or a YAML path (default: tiny)")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.dev_fraction=0.1 (repeatable)")
    common.add_argument("--run-dir", help="run directory, a path or a URI such as s3://bucket/run (default: runs/<preset>)")
    common.add_argument("--split-file", action="append", default=[], metavar="NAME=PATH",
                        help="prepare a raw ReDial jsonl file as split NAME, e.g. test=test_data.jsonl (repeatable)")
    common.add_argument("--force", action="store_true", help="re-run stages even when up to date")

    parser = argparse.ArgumentParser(prog="ecr-ray", description="ECR empathetic conversational recommender on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="run every stage (skipping those up to date)")
    run.add_argument("--stages", help="comma-separated stage names or prefixes to run, e.g. prepare,linking-report")
    sub.add_parser("prepare", parents=[common], help="validate, link and build turns for the pool and --split-file splits")
    sub.add_parser("evaluate", parents=[common],
                   help="prepare, link, label emotions and score the trained recommender on each --split-file (reports/eval-NAME.json)")
    sub.add_parser("ablations", parents=[common], help="run the stages the recommender ablations need, then them (reports/ablations.md/.png)")
    sub.add_parser("compare", parents=[common],
                   help="run the stages the comparison needs, then compare the base generator, fine-tuning without retrieval and ECR (reports/generation.md/.png)")
    sub.add_parser("judge-check", parents=[common],
                   help="the LLM judge's validity on training-split turns (reports/judge-check.json), to choose a judge without the dev turns")
    sub.add_parser("simulate", parents=[common], help="LLM-simulated seekers talk to the served recommender and the systems it is "
                   "compared with, iEvaLM's protocol offline (reports/simulation-<split>.md/.json/.png)")
    audit = sub.add_parser("audit", parents=[common], help="the hallucination audit of the chat path's replies: the blind sheet for an "
                           "auditor, then, with the verdicts, the agreement with the automatic rate (reports/hallucination-audit.md)")
    audit.add_argument("--labels", default="docs/hallucination-audit.jsonl", help="the verdicts, one JSON line per reply "
                       "(default: docs/hallucination-audit.jsonl)")
    audit.add_argument("--second", default=None, help="a second auditor's verdicts on the same sheet (same format): their "
                       "agreement with --labels is reported too")
    audit.add_argument("--out", default="reports/hallucination-audit.md", help="the page to write (default: reports/hallucination-audit.md)")
    audit.add_argument("--split", default="dev", help="the split whose served replies are audited (default: dev)")
    chat = sub.add_parser("chat", help="talk to a trained run in the terminal (its recorded config; --set overrides it)")
    chat.add_argument("--run-dir", help="the trained run directory, a path or a URI (default: runs/tiny)")
    chat.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override the run's recorded config, e.g. --set gen.decoding.max_new_tokens=48 (repeatable)")
    chat.add_argument("--top-k", type=int, default=None, help="movies shown per reply (default: serve.top_k)")
    results = sub.add_parser("results", help="write a trained run's figures to reports/results.md and the README's results table")
    results.add_argument("--run-dir", default=str(Path("runs") / "cpu"), help="the trained run directory (default: runs/cpu)")
    results.add_argument("--out", default="reports/results.md", help="the page to write (default: reports/results.md)")
    results.add_argument("--readme", default="README.md", help="a README whose results table is replaced, if it exists (default: README.md)")
    cfg = sub.add_parser("config", parents=[common], help="print the resolved config (or --describe every knob)")
    cfg.add_argument("--describe", action="store_true", help="every knob with its default and description")
    cfg.add_argument("--markdown", action="store_true", help="with --describe: the docs/configuration.md page")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "chat":  # a conversation: warnings and errors only, on stderr
        from ecr_ray.serving.terminal import chat

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return chat(args.run_dir or str(Path("runs") / "tiny"), args.overrides, args.top_k)
    if args.command == "results":
        return _results(args.run_dir, Path(args.out), Path(args.readme))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides = list(args.overrides)
        for spec in args.split_file:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise ConfigError(f"--split-file {spec!r} should be NAME=PATH")
            overrides.append(f"data.split_files.{name}={json.dumps(str(Path(path).resolve()))}")
        cfg = load_config(args.config, overrides)
        if args.command == "config":
            if args.describe and args.markdown:
                print(describe_markdown(), end="")
            elif args.describe:
                for key, default, doc in describe():
                    print(f"{key:32} {default:24} {doc}")
            else:
                print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        cfg.data.root()  # fail early, naming the setting, when there is no data
        if args.command == "evaluate" and not cfg.data.split_files:
            raise ConfigError("evaluate needs at least one --split-file NAME=PATH (a raw ReDial jsonl file)")
    except ConfigError as err:
        print(f"ecr-ray: {err}", file=sys.stderr)
        return 2

    from ecr_ray.artifacts import RUN_REPORT, SUMMARY
    from ecr_ray.pipeline import NotTrained, StagesFailed, evaluate, run, with_needs
    from ecr_ray.rundir import RunDir

    run_dir = RunDir(args.run_dir or Path("runs") / cfg.name)
    print(f"ecr-ray {args.command}: preset {cfg.name}, run directory {run_dir.uri}", flush=True)
    if args.command == "audit":
        return _audit(cfg, run_dir, args)
    try:
        if args.command == "evaluate":
            evaluate(cfg, run_dir, force=args.force)
        elif args.command in OPTIONAL:
            run(cfg, run_dir, with_needs(cfg, OPTIONAL[args.command]), force=args.force, report=False)
        else:
            stages = ["prepare"] if args.command == "prepare" else args.stages.split(",") if args.stages else None
            run(cfg, run_dir, stages, force=args.force, report=args.command == "run")
    except (NotTrained, ConfigError) as err:
        print(f"ecr-ray: {err}", file=sys.stderr)
        return 2
    except StagesFailed as err:
        print(f"ecr-ray: {len(err.failed)} stage(s) did not finish (the others did; summary: {run_dir.location(SUMMARY)}):",
              file=sys.stderr)
        for name, error in err.failed.items():
            print(f"  {name}: {error}", file=sys.stderr)
        return 1
    print(f"summary: {run_dir.location(SUMMARY)}")
    if args.command == "run":
        print(f"report: {run_dir.location(RUN_REPORT)}")
    return 0

def _audit(cfg, run_dir, args) -> int:
    from ecr_ray.artifacts import POOL, responses
    from ecr_ray.data.kg import load_kg
    from ecr_ray.eval.audit import agreement, audit_sample, audit_table, inter_rater, read_labels, sheet
    from ecr_ray.eval.served import SERVED
    from ecr_ray.gen.retrieval import Grounding

    group = POOL if args.split == "dev" else args.split
    folder = responses(SERVED, group)
    if not run_dir.exists(folder):
        print(f"ecr-ray: no chat-path replies in {run_dir.location(folder)} (run the gen-eval-served-{group} stage first)", file=sys.stderr)
        return 2
    sample = audit_sample(run_dir.read_table(folder).to_pylist())
    sheet_path = f"reports/hallucination-audit-sheet-{args.split}.md"
    run_dir.write_text(sheet_path, sheet(sample))
    print(f"audit sheet ({len(sample)} replies): {run_dir.location(sheet_path)}")
    labels = Path(args.labels)
    if not labels.exists():
        print(f"no verdicts yet: write them to {labels} (docs/hallucination-rubric.md), then run this again")
        return 0
    files = [labels, *([Path(args.second)] if args.second else [])]
    try:
        verdicts = [read_labels(f.read_text()) for f in files]
    except (OSError, ValueError) as err:
        print(f"ecr-ray: {err}", file=sys.stderr)
        return 2
    result = agreement(sample, verdicts[0], Grounding(load_kg(cfg.data.path(cfg.data.kg_dir))), cfg.eval.intervals)
    if args.second:
        result["second"] = {**inter_rater(sample, *verdicts), "labels": args.second}
    run_dir.write_json(f"reports/hallucination-audit-{args.split}.json", result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(audit_table(result, str(labels)))
    print(f"audit: {args.out}")
    return 0


def _results(run_dir: str, out: Path, readme: Path) -> int:
    from ecr_ray.pipeline import stale_stages
    from ecr_ray.rundir import RunDir
    from ecr_ray.run_report import FIGURE_STAGES, judge_validity_record, replace_results, results_page

    try:
        stale = stale_stages(RunDir(run_dir), FIGURE_STAGES)
        page, table = results_page(RunDir(run_dir), run_dir, stale)
    except FileNotFoundError as err:
        print(f"ecr-ray: {err}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    print(f"results: {out}")
    if validity := judge_validity_record(RunDir(run_dir)):
        (out.parent / "judge-validity.json").write_text(json.dumps(validity, indent=1) + "\n")
        print(f"judge validity: {out.parent / 'judge-validity.json'}")
    if readme.exists():
        try:
            readme.write_text(replace_results(readme.read_text(), table))
        except ValueError as err:
            print(f"ecr-ray: {readme} not updated: {err}", file=sys.stderr)
            return 2
        print(f"results table: {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
