"""docker-compose.yml passes `docker-compose config` (v1 from PyPI; no Docker engine here)."""

import os
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = os.environ.get("VIDSTORM_COMPOSE", str(ROOT / ".venv-compose" / "bin" / "docker-compose"))


FULL_ENV = {"REDIS_PASSWORD": "from-the-environment", "VIDSTORM_API_TOKEN": "token-from-env",
            "RAY_AUTH_TOKEN": "ray-token-from-env"}
RAY_SERVICES = {"ray-head", "gpu-worker", "vidstorm", "scheduler"}  # Ray processes and Ray drivers


def _config(env_extra):
    assert Path(COMPOSE).is_file(), f"{COMPOSE} missing: `make test` builds it (or set VIDSTORM_COMPOSE)"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_PASSWORD", "VIDSTORM_API_TOKEN", "RAY_AUTH_TOKEN")}
    env.update(env_extra)
    return subprocess.run([COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)


def test_compose_file_is_valid_and_complete():
    done = _config(FULL_ENV)
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
    done = _config({"REDIS_PASSWORD": "x", "RAY_AUTH_TOKEN": "y"})
    assert done.returncode != 0
    assert "set VIDSTORM_API_TOKEN in the environment" in done.stderr


def test_redis_password_must_come_from_the_environment():
    done = _config({"RAY_AUTH_TOKEN": "y", "VIDSTORM_API_TOKEN": "z"})
    assert done.returncode != 0
    assert "set REDIS_PASSWORD in the environment" in done.stderr


def _published(port) -> tuple[str, str]:
    """(host ip, container port) of a `ports:` entry in either syntax."""
    if isinstance(port, dict):
        return str(port.get("host_ip") or "0.0.0.0"), str(port["target"])
    parts = str(port).split(":")
    return (parts[0] if len(parts) == 3 else "0.0.0.0"), parts[-1].split("/")[0]


def test_ray_is_published_on_loopback_only_with_one_shared_token():
    services = yaml.safe_load(_config(FULL_ENV).stdout)["services"]
    for name in RAY_SERVICES & {"ray-head", "gpu-worker"}:  # every port of a Ray process (dashboard, client, GCS)
        for port in services[name].get("ports", []):
            host, target = _published(port)
            assert host == "127.0.0.1", f"{name} publishes {target} on {host}: Ray's job API runs any code"
    for name in RAY_SERVICES:
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == "ray-token-from-env", name
    assert "10001" not in str(services["ray-head"].get("ports", []))  # the client port is not published at all


def test_the_ray_token_must_come_from_the_environment():
    done = _config({"REDIS_PASSWORD": "x", "VIDSTORM_API_TOKEN": "z"})
    assert done.returncode != 0 and "set RAY_AUTH_TOKEN in the environment" in done.stderr


def test_no_container_runs_as_root():
    services = yaml.safe_load(_config(FULL_ENV).stdout)["services"]
    for name, svc in services.items():
        user = str(svc.get("user", "root")).split(":")[0]
        assert user not in ("root", "0", ""), name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "\nUSER 10001:10001" in dockerfile
