"""ecr-ray: the ECR empathetic conversational recommender as a Ray pipeline."""
from ecr_ray.config import Config, load_config
from ecr_ray.pipeline import run_stages

__all__ = ["Config", "load_config", "run_stages"]
__version__ = "0.1.0"
