"""Job specs and cron windows: pure logic, no Redis."""

import datetime as dt

import pytest

from pipeline.errors import ConfigError
from pipeline.jobs.spec import load_specs, parse_spec
from pipeline.jobs.windows import fire_times, period_of, run_id, select_windows

UTC = dt.timezone.utc


def spec(**kw):
    data = {"name": "cam1-nightly", "kind": "ingest", "schedule": "0 2 * * *", "timezone": "Europe/Berlin",
            "sources": ["/srv/cam1"]}
    return parse_spec({**data, **kw}, "test.yaml")


def t(text):
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC) if "+" not in text else dt.datetime.fromisoformat(text)


def test_cron_times_are_local_to_the_job_time_zone_across_dst():
    s = spec()
    times = fire_times(s, t("2026-03-27T12:00:00"), t("2026-03-31T12:00:00"))
    # 02:00 Berlin is 01:00 UTC in winter; on 29 March 02:00 does not exist (clocks jump to 03:00).
    assert [x.isoformat() for x in times] == [
        "2026-03-28T01:00:00+00:00", "2026-03-29T01:00:00+00:00",
        "2026-03-30T00:00:00+00:00", "2026-03-31T00:00:00+00:00"]


def test_missed_windows_are_caught_up_by_policy():
    due = [t("2026-11-18T01:00:00"), t("2026-11-19T01:00:00"), t("2026-11-20T01:00:00")]
    now = t("2026-11-20T01:00:05")
    run, skipped = select_windows(spec(catch_up="all"), due, now, on_time_s=60)
    assert run == [(due[0], "catch-up"), (due[1], "catch-up"), (due[2], "cron")] and skipped == []
    run, skipped = select_windows(spec(catch_up="all", max_catch_up=1), due, now, on_time_s=60)
    assert run == [(due[1], "catch-up"), (due[2], "cron")] and skipped == [due[0]]
    run, skipped = select_windows(spec(catch_up="latest"), due, t("2026-11-20T09:00:00"), on_time_s=60)
    assert run == [(due[2], "catch-up")] and skipped == due[:2]
    run, skipped = select_windows(spec(catch_up="none"), due, now, on_time_s=60)
    assert run == [(due[2], "cron")] and skipped == due[:2]


def test_digest_period_is_the_local_day_before_the_window():
    s = spec(kind="digest", sources=[], period="day")
    start, end = period_of(s, t("2026-11-21T01:00:00"))  # 02:00 Berlin
    assert (start.isoformat(), end.isoformat()) == ("2026-11-19T23:00:00+00:00", "2026-11-20T23:00:00+00:00")
    start, end = period_of(s, t("2026-03-30T00:00:00"))  # the day clocks went forward has 23 hours
    assert (end - start) == dt.timedelta(hours=23)
    start, end = period_of(spec(kind="digest", sources=[], period="window"), t("2026-11-21T01:00:00"))
    assert end - start == dt.timedelta(days=1)


def test_run_ids_are_stable_per_window():
    w = t("2026-11-21T01:00:00")
    assert run_id("cam1", w) == run_id("cam1", w) == "cam1@20261121T010000Z"
    assert run_id("cam1", w, "manual").endswith("-manual")


@pytest.mark.parametrize("field,value,message", [
    ("schedule", "61 * * * *", "not a 5-field cron expression"),
    ("timezone", "Mars/Olympus", "unknown time zone"),
    ("kind", "transcode", "kind must be one of"),
    ("name", "bad name!", "name 'bad name!'"),
    ("catch_up", "sometimes", "catch_up must be one of"),
    ("overrides", ["decode.fsp=2"], "unknown config key 'decode.fsp'"),
    ("colour", "blue", "unknown job field 'colour'"),
    ("sources", [], "needs sources"),
])
def test_bad_specs_fail_with_one_line_naming_the_field(field, value, message):
    with pytest.raises(ConfigError) as err:
        spec(**{field: value})
    assert message in str(err.value) and "test.yaml" in str(err.value) and "\n" not in str(err.value)


def test_specs_load_from_yaml_with_nested_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "name: a\nkind: ingest\nschedule: '*/5 * * * *'\nsources: [{path: /x, glob: '*.mp4'}]\n"
        "overrides: {temporal: {mode: offline}, decode: {fps: 2}}\n")
    (tmp_path / "b.yaml").write_text("name: a\nkind: digest\nschedule: '0 3 * * *'\n")
    with pytest.raises(ConfigError, match="already defined"):
        load_specs([tmp_path])
    (tmp_path / "b.yaml").unlink()
    specs = load_specs([tmp_path, tmp_path / "missing"])
    assert specs["a"].overrides == ["temporal.mode=offline", "decode.fps=2"]
