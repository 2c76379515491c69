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


def test_columns_are_written_once():
    """The segments and summaries columns are the record dataclasses' fields (types.py), the stored
    schema is built from them, and the API's response models from the stored schemas: a column added
    or retyped in one place reaches the others, and a record field without a column type is refused."""
    import dataclasses

    import pyarrow as pa
    import pytest

    from actors.server import schemas as api
    from pipeline.jobs.result import JobResult
    from pipeline.store.schema import JOBS, LISTED, SEGMENTS, SUMMARIES
    from pipeline.types import Segment, Summary, arrow_schema, column

    assert SEGMENTS.names == [f.name for f in dataclasses.fields(Segment)]
    assert SUMMARIES.names == [f.name for f in dataclasses.fields(Summary)]
    media = set(api.MediaUrls.model_fields)  # thumbnail_url, clip_url: made by the API, not stored
    assert set(api.Segment.model_fields) == (set(SEGMENTS.names) - {"visual_embedding", "text_embedding", "level",
                                                                     "thumbnail"}) | media
    assert set(api.Summary.model_fields) == set(SUMMARIES.names) - {"text_embedding", "config_fingerprint",
                                                                     "created_at"}
    assert [f for f in api.Segment.model_fields if f not in media] == list(LISTED["segments"])  # what is selected
    assert list(api.Summary.model_fields) == list(LISTED["summaries"])
    assert set(api.Job.model_fields) == set(JOBS.names)
    assert set(JobResult(job_id="j", source="s", stream_id="x").row()) <= set(JOBS.names)

    @dataclasses.dataclass
    class Extended:
        stream_id: str = column(pa.string())
        gap: float = column(pa.float64(), default=0.0)

    assert arrow_schema(Extended).field("gap").type == pa.float64()
    model = api._columns_model("Extended", arrow_schema(Extended), keys=("stream_id",))
    assert model(stream_id="a", gap=None).gap is None and model.model_fields["stream_id"].is_required()

    @dataclasses.dataclass
    class Forgotten:
        stream_id: str = column(pa.string())
        note: str = ""

    with pytest.raises(TypeError, match="note"):
        arrow_schema(Forgotten)
    # no second column list left in the API or the store
    for rel in ("actors/server/app.py", "actors/server/schemas.py", "pipeline/store/schema.py",
                "pipeline/store/query.py"):
        source = (ROOT / rel).read_text()
        assert "caption: str" not in source and '("caption", pa.string())' not in source, rel
        assert "n_frames, source" not in source, rel


def test_architecture_names_only_files_that_exist():
    """ARCHITECTURE.md maps each step to a file: every path it names is there (the page cannot drift
    into describing code that moved)."""
    import re

    text = (ROOT / "ARCHITECTURE.md").read_text()
    paths = set(re.findall(r"\b((?:pipeline|actors)/[\w/]+(?:\.py|/))", text))
    assert len(paths) >= 20
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"ARCHITECTURE.md names missing files: {missing}"


def test_decoder_and_writer_processes_never_import_torch():
    """A decoder or writer actor imports its stage module (and the runtime that makes it an actor) but
    not torch: six processes importing torch at once on two cores is most of the Ray path's start."""
    import subprocess
    import sys

    code = ("import sys; import actors.runtime, actors.runtime.ingest, actors.runtime.decoder, actors.runtime.writer, "
            "pipeline.store, pipeline.rollup, pipeline.reuse, pipeline.messages, pipeline.jobs.result; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
