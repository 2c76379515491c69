"""The layout the README states: nothing under pipeline/ imports Ray, and only the queue adapter and
the job board import redis (checked on the source, so a lazy import inside a function counts too)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REDIS_ALLOWED = {"pipeline/queue/redis_streams.py", "pipeline/queue/server.py", "pipeline/jobs/board.py"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_pipeline_never_imports_ray_and_redis_only_in_its_adapters():
    files = sorted((ROOT / "pipeline").rglob("*.py"))
    assert len(files) > 20
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        imports = _imports(path)
        assert "ray" not in imports, f"{rel} imports ray: pipeline/ must run without Ray"
        if rel not in REDIS_ALLOWED:
            assert "redis" not in imports, f"{rel} imports redis: only {sorted(REDIS_ALLOWED)} may"
    readme = (ROOT / "README.md").read_text()
    assert "never imports Ray" in readme and "pure logic (no Ray, no Redis)" not in readme


def test_job_rows_are_built_in_one_place():
    """Ingest job rows come from JobResult.row() (and named-job runs from runs.run_row): no other code
    writes a `"job_id": ...` dict literal, so the columns cannot drift apart between paths."""
    allowed = {"pipeline/jobs/runs.py"}
    offenders = []
    for path in sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "actors").rglob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "job_id"
                                                  for k in node.keys):
                if rel not in allowed:
                    offenders.append(f"{rel}:{node.lineno}")
    assert offenders == [], offenders
