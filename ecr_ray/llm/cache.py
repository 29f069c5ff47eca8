"""Asking an LLM for many rows, with answers cached by key.

Answers are cached in parquet parts, one part per batch written by the actor that asked, so a re-run
or a crash resumes without asking again. `ask_pending` runs the asking actors on Ray Data against the
configured endpoint, or the local server it starts and stops.
"""
from __future__ import annotations

from ecr_ray.config import ActorPool
from ecr_ray.llm.client import ERROR, FAILED, OK, ValidatedChat, probe_endpoint


class CachedAsker:
    """Ray Data UDF base: a batch's rows asked in threads (`ask`), their results written as one cache part by
    this actor before it returns, so a stage killed mid-way loses at most the batches in flight (Ray Data
    itself would gather the small outputs into one write at the end of the dataset). Returns the keys."""

    schema = None  # of the cache rows (subclasses)

    def __init__(self, llm: dict, actors: int, run: str, cache: str):
        import pyarrow.fs as pafs

        self.chat = ValidatedChat(llm, llm["qps"] / actors)
        self.threads, self.run = max(1, llm["concurrency"] // actors), run
        self.fs, self.cache = pafs.FileSystem.from_uri(cache)

    def ask(self, row: dict) -> dict:
        raise NotImplementedError

    def __call__(self, batch):
        import uuid
        from concurrent.futures import ThreadPoolExecutor

        import pyarrow as pa
        import pyarrow.parquet as pq

        with ThreadPoolExecutor(self.threads) as pool:
            table = pa.Table.from_pylist(list(pool.map(self.ask, batch.to_pylist())), schema=self.schema)
        pq.write_table(table, f"{self.cache}/part-{self.run}-{uuid.uuid4().hex[:8]}.parquet", filesystem=self.fs)
        return table.select(["key"])


def ask_pending(cfg, run_dir, cache: str, asker: type, rows: list[dict], llm, pool: ActorPool, local_server: bool = True,
                **asker_kwargs) -> str:
    """Every row through `asker` on a Ray Data actor pool against `llm.base_url` (None: the local server
    serving `llm.model`, started and stopped here, unless `local_server` is false because the asker
    runs the model itself); the results land in `cache`. Returns the run id the rows carry."""
    import dataclasses
    import uuid

    import ray

    from ecr_ray.llm.server import start_llm_server, stop_llm_server
    from ecr_ray.raytools import blocks_for, connect, map_actors

    connect(cfg.ray)
    run_id, base_url, serving = uuid.uuid4().hex, llm.base_url, llm.base_url is None and local_server
    if serving:
        base_url = start_llm_server(cfg, llm.model, client_cpus=pool.actors * pool.cpus)
    try:
        settings = {**dataclasses.asdict(llm), "base_url": base_url}
        if base_url:
            probe_endpoint(base_url, settings)
        run_dir.fs.create_dir(run_dir.path(cache), recursive=True)
        ds = ray.data.from_items(rows, override_num_blocks=blocks_for(len(rows), pool.batch_size))
        kwargs = {"llm": settings, "actors": pool.actors, "run": run_id, "cache": run_dir.location(cache), **asker_kwargs}
        map_actors(ds, asker, kwargs, pool).materialize()
    finally:
        if serving:
            stop_llm_server()
    return run_id


def this_run(rows: list[dict], run_id: str) -> list[dict]:
    """The cache rows one run wrote, once per key (a batch retried after its actor died is written twice)."""
    return list({r["key"]: r for r in rows if r["run"] == run_id}.values())


def read_cache(run_dir, folder: str, schema) -> list[dict]:
    """Every readable cache part; a part cut short by a crash is skipped (its rows are asked again)."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    if not run_dir.exists(folder):
        return []
    rows = []
    for info in run_dir.fs.get_file_info(pafs.FileSelector(run_dir.path(folder))):
        try:
            rows += pq.read_table(info.path, filesystem=run_dir.fs, schema=schema).to_pylist()
        except (pa.ArrowInvalid, OSError):
            continue
    return rows


def best_results(rows: list[dict], keep_errors: bool = False) -> dict[str, dict]:
    """key -> the final result (an answer, or a recorded failure); unanswered rows only with keep_errors."""
    best: dict[str, dict] = {}
    rank = {OK: 2, FAILED: 1, ERROR: 0}
    for row in rows:
        if (row["status"] != ERROR or keep_errors) and rank[row["status"]] >= rank[best.get(row["key"], {"status": ERROR})["status"]]:
            best[row["key"]] = row
    return best
