"""`ecr-ray simulate` on the tiny run: a real small model plays the seekers of three dev dialogues for two rounds
against the served parts, the baseline and the sanity systems."""
import os

import numpy as np
import pyarrow as pa

from ecr_ray.sim.systems import KS


def test_simulated_seekers_talk_to_every_system_and_the_report_holds(gen_run):
    from ecr_ray.pipeline import run_stages
    from ecr_ray.sim.persona import personas
    from ecr_ray.sim.seeker import TitleFilter
    from ecr_ray.data.kg import load_kg

    cfg, run_dir, _ = gen_run
    summary = run_stages(cfg, run_dir, only=["simulate"])["simulate"]
    out = run_dir.read_json("reports/simulation-dev.json")
    people = {p["conversation_id"]: p for p in personas(cfg, run_dir)}
    assert out["dialogues"] == len(people) == cfg.sim.dialogues and out["rounds"] == cfg.sim.rounds == 2
    assert set(out["systems"]) == {"ecr-ray", "ecr-ray without emotion", "co-occurrence + copy", "always target", "random"}
    title_filter = TitleFilter(load_kg(cfg.data.path(cfg.data.kg_dir)))
    for name, by_mode in out["systems"].items():
        assert set(by_mode) == {"attribute", "free"}
        for mode, m in by_mode.items():
            for d in m["dialogues"]:
                persona = people[d["conversation_id"]]
                assert 1 <= len(d["rounds"]) <= 2
                for x in d["rounds"]:  # no message that reached a system names a target
                    assert x["message"] is None or not title_filter.leaks(x["message"], persona)
                for k in KS:  # the success rule: the first round whose top k held a target
                    assert d["success"][str(k)] == next((x["round"] for x in d["rounds"] if x["message"] and x["hits"][str(k)]), None)
            for k in KS:  # success by round: cumulative, and read from the dialogues
                by_round = [m[f"success@{k} round {r}"] for r in (1, 2)]
                assert by_round[0] <= by_round[1] and by_round[1] == np.mean([d["success"][str(k)] is not None for d in m["dialogues"]])
    always, chance = out["systems"]["always target"], out["systems"]["random"]
    for mode in ("attribute", "free"):  # the sanity systems: the target first wins at round 1 (unless the seeker failed)
        opened = np.mean([d["rounds"][0]["message"] is not None for d in always[mode]["dialogues"]])
        assert always[mode]["success@1 round 1"] == opened and chance[mode]["success@1 round 2"] == 0.0
    v = out["validity"]
    assert v["leak_rate_after_filter"] == 0.0 and 0 <= v["rejected_share"] <= 1 and summary["leak_rate_after_filter"] == 0.0
    assert 0 <= v["assistant_voice"] <= 1
    for name in ("ecr-ray", "co-occurrence + copy"):  # every reply judged in its conversation
        llm = out["systems"][name]["free"]["llm"]
        replies = sum(x["message"] is not None for d in out["systems"][name]["free"]["dialogues"] for x in d["rounds"])
        assert llm["scored"] == replies == llm["ok"] and all(0 < llm[f"llm_{c}"] < 9 for c in ("lifelikeness", "informativeness"))
    assert out["turn_by_turn"]["examples"] > 0 and 0 <= out["turn_by_turn"]["recall@50"] <= 1
    page = run_dir.read_text("reports/simulation-dev.md")
    assert "| ecr-ray | free |" in page and "Simulator validity" in page and "### Dialogue" in page
    assert open(run_dir.path("reports/simulation-dev.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_stopped_simulation_resumes_with_the_dialogues_not_yet_done(gen_run):
    """Each dialogue is cached as its batch ends: a re-run reuses them all; with one lost (a run stopped before its
    batch ended), only that one is simulated again."""
    import pyarrow.parquet as pq

    from ecr_ray.artifacts import SIM_CACHE
    from ecr_ray.pipeline import run_stages

    cfg, run_dir, _ = gen_run
    if not run_dir.exists("reports/simulation-dev.json"):
        run_stages(cfg, run_dir, only=["simulate"])
    before = run_dir.read_json("reports/simulation-dev.json")
    again = run_stages(cfg, run_dir, only=["simulate"], force=True)["simulate"]
    after = run_dir.read_json("reports/simulation-dev.json")
    assert again["reused_from_cache"] == cfg.sim.dialogues and after["systems"] == before["systems"]
    assert after["turn_by_turn"] == before["turn_by_turn"]

    parts = sorted(os.listdir(run_dir.path(SIM_CACHE)))
    table = pa.concat_tables([pq.read_table(run_dir.path(f"{SIM_CACHE}/{p}")) for p in parts])
    for p in parts:
        os.remove(run_dir.path(f"{SIM_CACHE}/{p}"))
    lost = before["systems"]["ecr-ray"]["free"]["dialogues"][-1]["conversation_id"]
    pq.write_table(table.slice(0, table.num_rows - 1), run_dir.path(f"{SIM_CACHE}/part-kept.parquet"))
    assert table.column("key")[-1].as_py().endswith(f":{lost}")
    resumed = run_stages(cfg, run_dir, only=["simulate"], force=True)["simulate"]
    out = run_dir.read_json("reports/simulation-dev.json")
    assert resumed["reused_from_cache"] == cfg.sim.dialogues - 1 and out["dialogues"] == cfg.sim.dialogues
    assert [d["conversation_id"] for d in out["systems"]["random"]["attribute"]["dialogues"]] == \
        [d["conversation_id"] for d in before["systems"]["random"]["attribute"]["dialogues"]]
    assert out["systems"]["ecr-ray"]["attribute"]["dialogues"][:-1] == before["systems"]["ecr-ray"]["attribute"]["dialogues"][:-1]
