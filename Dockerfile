# shardmq in a container: `docker build -t shardmq .` then
# `docker run --rm -p 1883:1883 -p 9100:9100 shardmq`.
# Settings come from flags appended to `docker run ... shardmq`, from SHARDMQ_*
# variables (-e SHARDMQ_WORKERS=auto) or from a TOML file mounted at
# /etc/shardmq/shardmq.toml and named with --config.
FROM python:3.12-slim AS build
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir build && python -m build --wheel --outdir /dist

FROM python:3.12-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/shardmq --create-home shardmq
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir /tmp/*.whl && rm /tmp/*.whl
USER shardmq
WORKDIR /var/lib/shardmq
EXPOSE 1883 9100
# /healthz on the metrics port answers 200 while every worker's loop responds
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["shardmq", "serve"]
CMD ["--host", "0.0.0.0", "--port", "1883", "--metrics-port", "9100", "--workers", "auto"]
