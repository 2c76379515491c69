"""POST /jobs/{name}/run puts a run on the job board; a scheduler runs it; GET /jobs shows it."""

import datetime as dt
import time

from fastapi.testclient import TestClient

from actors.server.app import create_app
from actors.server.serve import _run_requester
from actors.runtime.scheduler import JobExecutor, Scheduler
from pipeline.config import load_config
from pipeline.jobs.board import JobBoard
from pipeline.jobs.spec import load_specs, spec_folders
from pipeline.queue import connect
from pipeline.queue.server import EmbeddedRedis
from pipeline.store import Store


def test_a_run_requested_over_http_is_run_by_the_scheduler(tmp_path, tiny_overrides, text_embedder):
    data = tmp_path / "data"
    (data / "jobs").mkdir(parents=True)
    (data / "jobs" / "daily.yaml").write_text("name: daily\nkind: digest\nschedule: '30 6 * * *'\n")
    cfg = load_config(None, tiny_overrides)
    auth = {"Authorization": "Bearer s3cret", "X-Vidstorm-Request": "1"}
    with EmbeddedRedis(data / "redis") as server:  # the scheduler's embedded Redis, found by the API
        app = create_app(data / "store", "s3cret", text_embedder, _run_requester(cfg, str(tmp_path / "none"), data),
                         refresh_s=0.1)
        with TestClient(app) as client:
            posted = client.post("/jobs/daily/run", headers=auth)
            assert posted.status_code == 202, posted.text
            run_id = posted.json()["run_id"]
            assert run_id.startswith("daily@") and run_id.endswith("-manual")
            assert client.post("/jobs/weekly/run", headers=auth).status_code == 404
            deadline = time.monotonic() + 10
            while not any(i["job_id"] == run_id and i["status"] == "pending"
                          for i in client.get("/jobs", params={"name": "daily"}, headers=auth).json()["items"]):
                assert time.monotonic() < deadline, "a requested run is listed before it starts"
                time.sleep(0.1)

            specs = load_specs(spec_folders(str(tmp_path / "none"), data))
            scheduler = Scheduler(specs, JobBoard(connect(server.url), cfg.queue.prefix),
                                  JobExecutor(data, overrides=tiny_overrides, log=lambda m: None),
                                  Store(data / "store"), cfg.scheduler, log=lambda m: None)
            [row] = scheduler.run_due()
            assert (row["run_id"], row["status"], row["trigger"]) == (run_id, "done", "manual")
            deadline = time.monotonic() + 10
            while True:
                items = client.get("/jobs", params={"name": "daily"}, headers=auth).json()["items"]
                runs = [i for i in items if i["job_id"] == run_id]
                if runs and runs[0]["status"] == "done" or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert runs and runs[0]["status"] == "done" and runs[0]["attempts"] == 1
            assert dt.datetime.fromisoformat(runs[0]["window"]) <= dt.datetime.now(dt.timezone.utc)
