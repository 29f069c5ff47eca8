"""The simulate stage (optional: `ecr-ray simulate`): simulated seekers talk to the served recommender and the
systems it is compared with -> reports/simulation-<split>.{json,md,png}."""
from __future__ import annotations

from ecr_ray.config import Config
from ecr_ray.llm.client import require_api_key
from ecr_ray.sim.seeker import MODES
from ecr_ray.sim.simulate import needed_stages, simulate, simulation_reports
from ecr_ray.sim.systems import SYSTEMS, listed
from ecr_ray.stage import Stage


def sim_stages(cfg: Config) -> list[Stage]:
    require_api_key(cfg.sim.llm, "the seeker simulator", "sim.llm")
    listed(cfg.sim.modes, MODES, "sim.modes"), listed(cfg.sim.systems, SYSTEMS, "sim.systems")  # fail at planning
    return [Stage("simulate", run=simulate, optional=True, outputs=simulation_reports(cfg), version=2,
                  needs=needed_stages(cfg),
                  config=("sim", "eval.intervals", "eval.baselines", "eval.scorer", "eval.readings", "rec.recency_decay", "gen.context_turns"))]
