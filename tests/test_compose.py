"""docker-compose.yml passes `docker-compose config` (v1 from PyPI; no Docker engine here)."""

import os
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = os.environ.get("VIDSTORM_COMPOSE", str(ROOT / ".venv-compose" / "bin" / "docker-compose"))


def _config(env_extra):
    assert Path(COMPOSE).is_file(), f"{COMPOSE} missing: `make test` builds it (or set VIDSTORM_COMPOSE)"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_PASSWORD", "VIDSTORM_API_TOKEN")}
    env.update(env_extra)
    return subprocess.run([COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)


def test_compose_file_is_valid_and_complete():
    done = _config({"REDIS_PASSWORD": "from-the-environment", "VIDSTORM_API_TOKEN": "token-from-env"})
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) == {"redis", "ray-head", "gpu-worker", "vidstorm", "scheduler", "api"}
    redis = services["redis"]
    assert "--appendonly yes" in redis["command"] and "from-the-environment" in redis["command"]
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert all("healthcheck" in svc for svc in services.values())
    assert services["vidstorm"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "configs/cluster.yaml" in services["vidstorm"]["command"]
    assert "vidstorm scheduler" in services["scheduler"]["command"]
    api = services["api"]
    assert "--host 0.0.0.0" in api["command"] and api["environment"]["VIDSTORM_API_TOKEN"] == "token-from-env"


def test_api_token_must_come_from_the_environment():
    done = _config({"REDIS_PASSWORD": "x"})
    assert done.returncode != 0
    assert "set VIDSTORM_API_TOKEN in the environment" in done.stderr


def test_redis_password_must_come_from_the_environment():
    done = _config({})
    assert done.returncode != 0
    assert "set REDIS_PASSWORD in the environment" in done.stderr
