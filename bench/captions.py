"""Are the stored captions true? Held-out synth-data clips ingested with a trained config, each
stored caption checked word by word against the clip's truth.

    python bench/captions.py DATA.jsonl [--config configs/toy.yaml] [--task direction] [--n 24]

The first N clips of the task (in file order; reversed controls count as clips) are copied to a
temporary folder and ingested with `vidstorm ingest --local`, the same path as any footage; then
each clip's first stored caption is read back from the Parquet store. A caption is wholly right
when it names the expected key words in order (colour, shape, direction; `vidstorm demo-report`
uses the same rule). The last line is one JSON object: n, all_right (share), and the share right
of each key word (colour, shape, direction).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.train.toy import caption_right  # noqa: E402

COLOURS = {"red", "green", "blue", "yellow", "white"}
SHAPES = {"circle", "square", "triangle"}
DIRECTIONS = {"left", "right", "up", "down"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="synth-data JSONL (held-out clips) with captions")
    ap.add_argument("--config", default=str(ROOT / "configs" / "toy.yaml"))
    ap.add_argument("--task", default="direction")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    chosen, seen = [], set()
    for row in rows:
        if row.get("task") == args.task and row.get("caption") and row["video"] not in seen:
            seen.add(row["video"])
            chosen.append(row)
    chosen = chosen[: args.n]
    if not chosen:
        sys.exit(f"no {args.task} clips with captions in {args.data}")
    with tempfile.TemporaryDirectory(prefix="vidstorm-captions-") as tmp:
        clips = Path(tmp) / "clips"
        clips.mkdir()
        for row in chosen:
            shutil.copy(args.data.parent / row["video"], clips / Path(row["video"]).name)
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "actors.cli", "ingest", str(clips), "--local", "--config",
                               args.config, "--data", str(Path(tmp) / "data"), *args.overrides],
                              cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"ingest failed: {done.stderr.strip().splitlines()[-1:]}")
        seconds = time.time() - started
        import pyarrow.dataset as ds

        table = ds.dataset(Path(tmp) / "data" / "store" / "segments", partitioning="hive").to_table()
        stored = {Path(r["source"]).name: r["caption"] for r in table.to_pylist() if r["chunk_seq"] == 0}
    counts = {"all_right": 0, "colour": 0, "shape": 0, "direction": 0}
    print(f"{'clip':<20}{'ok':<4}{'stored caption':<48}expected")
    for row in chosen:
        caption = stored.get(Path(row["video"]).name, "")
        words = set(re.findall(r"[a-z]+", caption.lower()))
        truth = set(re.findall(r"[a-z]+", row["caption"].lower()))
        ok = caption_right(row["caption"], caption)
        counts["all_right"] += ok
        for key, vocab in (("colour", COLOURS), ("shape", SHAPES), ("direction", DIRECTIONS)):
            counts[key] += (words & vocab) == (truth & vocab)  # the right word and no other of its kind
        print(f"{Path(row['video']).stem:<20}{'yes' if ok else 'no':<4}{caption[:46]:<48}{row['caption']}")
    n = len(chosen)
    print(f"{n} {args.task} clips ingested in {seconds:.0f} s; wholly right {counts['all_right']}/{n}")
    print(json.dumps({"n": n, **{k: round(v / n, 3) for k, v in counts.items()}, "ingest_s": round(seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
