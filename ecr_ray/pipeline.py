"""The stage graph and its runner: the only module that imports every stages.py.

Each stage (`ecr_ray.stage.Stage`) is a function of (config, run directory) -> artifacts + summary,
skipped when its manifest holds the same hash. The manifest is written last, so a crash leaves
the stage to run again.
"""
from __future__ import annotations

import time
import traceback
from typing import Sequence

from ecr_ray.artifacts import GENERATOR, RECOMMENDER, RUN_REPORT, SUMMARY, NotTrained, is_trained, manifest
from ecr_ray.config import Config, ConfigError, load_config
from ecr_ray.rundir import RunDir
from ecr_ray.stage import Stage


def stage_graph(cfg: Config) -> list[Stage]:
    """Every stage that exists, in dependency order (later issues append theirs)."""
    from ecr_ray.data.stages import data_stages
    from ecr_ray.emotion.stages import emotion_stages
    from ecr_ray.eval.stages import eval_stages
    from ecr_ray.gen.stages import gen_stages
    from ecr_ray.rec.stages import rec_stages
    from ecr_ray.sim.stages import sim_stages

    return data_stages(cfg) + emotion_stages(cfg) + rec_stages(cfg) + gen_stages(cfg) + eval_stages(cfg) + sim_stages(cfg)


class StagesFailed(RuntimeError):
    """Stages that raised (their dependents were skipped; every other stage ran)."""

    def __init__(self, failed: dict[str, str], summaries: dict[str, dict]):
        self.failed, self.summaries = failed, summaries
        super().__init__("; ".join(f"{name}: {error}" for name, error in failed.items()))


def run_stages(cfg: Config, run_dir: RunDir, only: Sequence[str] | None = None, force: bool = False) -> dict[str, dict]:
    """Run the graph (or the named stages and nothing else); returns name -> summary. A stage that raises
    does not stop the run: the stages that need it are skipped, the others still run, then StagesFailed."""
    stages = stage_graph(cfg)
    known = [s.name for s in stages]
    for name in only or ():
        if not any(_matches(name, k) for k in known):
            raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(known)}")
    hashes: dict[str, str] = {}
    summaries: dict[str, dict] = {}
    failed: dict[str, str] = {}  # name -> its error, or the failed stage it needed
    for stage in stages:
        digest = stage.digest(cfg, hashes)
        hashes[stage.name] = digest
        # an optional stage is selected by its full name only, never by a prefix such as "rec"
        selected = any(n == stage.name if stage.optional else _matches(n, stage.name) for n in only or ())
        if not selected and (only or stage.optional):
            continue
        blocked = next((n for n in stage.needs if n in failed), None)
        if blocked:
            failed[stage.name] = f"not run: it needs {blocked}, which failed"
            summaries[stage.name] = {"failed": failed[stage.name]}
            print(f"[{stage.name}] {failed[stage.name]}", flush=True)
            continue
        record = manifest(stage.name)
        if not force and run_dir.exists(record):
            previous = run_dir.read_json(record)
            if previous["hash"] == digest and all(run_dir.exists(o) for o in stage.outputs):
                summaries[stage.name] = {**previous["summary"], "skipped": True}
                print(f"[{stage.name}] up to date (hash {digest}), skipped", flush=True)
                continue
        for output in stage.outputs:
            run_dir.delete(output)
        print(f"[{stage.name}] running", flush=True)
        start = time.perf_counter()
        try:
            summary = stage.run(cfg, run_dir)
        except Exception as err:  # noqa: BLE001 - reported below and raised as StagesFailed once the rest has run
            traceback.print_exc()
            failed[stage.name] = f"{type(err).__name__}: {err}"
            summaries[stage.name] = {"failed": failed[stage.name], "seconds": round(time.perf_counter() - start, 2)}
            print(f"[{stage.name}] FAILED after {summaries[stage.name]['seconds']}s: {failed[stage.name]}", flush=True)
            continue
        summary["seconds"] = round(time.perf_counter() - start, 2)
        run_dir.write_json(record, {"hash": digest, "summary": summary, "config": cfg.to_dict()})
        summaries[stage.name] = summary
        print(f"[{stage.name}] done in {summary['seconds']}s: {_one_line(summary)}", flush=True)
    if failed:
        raise StagesFailed(failed, summaries)
    return summaries


def run(cfg: Config, run_dir: RunDir | str, stages: Sequence[str] | None = None, force: bool = False,
        report: bool = True) -> dict[str, dict]:
    """Every stage (or the named ones: full names or prefixes such as "rec"), skipping those up to date;
    writes reports/summary.json and (`report`) reports/run.md. Returns name -> summary."""
    from ecr_ray.run_report import run_report

    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    start = time.perf_counter()

    def write(summaries: dict[str, dict]) -> None:
        run_dir.write_json(SUMMARY, summaries)
        if report:
            run_dir.write_text(RUN_REPORT, run_report(summaries, cfg.name, run_dir.uri, time.perf_counter() - start))

    try:
        summaries = run_stages(cfg, run_dir, only=stages, force=force)
    except StagesFailed as err:  # a failed run still reports what it did
        write(err.summaries)
        raise
    write(summaries)
    return summaries


def evaluate(cfg: Config, run_dir: RunDir | str, force: bool = False) -> dict[str, dict]:
    """A trained run on each `data.split_files` group: prepare, emotions, the recommender's metrics and, once
    a generator is trained, its responses and their metrics (reports/eval-NAME.json, reports/gen-eval-NAME.json)."""
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if not cfg.data.split_files:
        raise ValueError("evaluation needs at least one split file (data.split_files, `--split-file NAME=PATH`)")
    if not is_trained(run_dir, RECOMMENDER):
        raise NotTrained(f"no trained recommender in {run_dir.uri}; train it first with `ecr-ray run --config {cfg.name} --run-dir {run_dir.uri}`")
    known = {s.name for s in stage_graph(cfg)}
    kinds = ["prepare", "emotion-infer", *(["stance-infer"] if cfg.rec.entity_stance else []), "rec-context", "rec-eval"]
    if is_trained(run_dir, GENERATOR):  # responses too, once a generator is trained
        kinds += ["gen-respond", "gen-eval"]
    only = [f"{kind}-{name}" for name in cfg.data.split_files for kind in kinds if f"{kind}-{name}" in known]
    return run(cfg, run_dir, only, force, report=False)


def with_needs(cfg: Config, name: str) -> list[str]:
    """`name` and every stage it needs, directly or not, in graph order (what `ecr-ray ablations` runs)."""
    by_name = {s.name: s for s in stage_graph(cfg)}
    wanted, todo = set(), [name]
    while todo:
        stage = by_name[todo.pop()]
        if stage.name not in wanted:
            wanted.add(stage.name)
            todo.extend(stage.needs)
    return [n for n in by_name if n in wanted]


def stale_stages(run_dir: RunDir, names: Sequence[str]) -> set[str]:
    """Which of `names` hold a record that no longer matches what it read: its hash, recomputed from the config it
    ran with and the hashes its needed stages' records hold now, differs (one of them ran again since, or the
    code's version moved), or a stage it needs is stale or unrecorded. Their figures describe an earlier state."""
    records = {}  # each manifest read once: a need's record serves its verdict and its dependents' hashes
    verdicts: dict[str, bool] = {}

    def stale(name: str) -> bool:
        if name not in verdicts:
            if name not in records:
                records[name] = run_dir.read_json(manifest(name)) if run_dir.exists(manifest(name)) else None
            record = records[name]
            if record is None:
                verdicts[name] = True
            else:
                cfg = load_config(base=record["config"])
                stage = next(s for s in stage_graph(cfg) if s.name == name)
                verdicts[name] = any(stale(n) for n in stage.needs) or stage.digest(
                    cfg, {n: records[n]["hash"] for n in stage.needs}) != record["hash"]
        return verdicts[name]

    return {name for name in names if stale(name)}


def _matches(selector: str, name: str) -> bool:
    """'prepare' selects every 'prepare-*' stage; a full name selects itself."""
    return name == selector or name.startswith(selector + "-")


def _one_line(summary: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list)) and k != "seconds")
