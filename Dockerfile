# syntax=docker/dockerfile:1
# Build a wheel in one stage, install it into a clean slim image in the next.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY connector ./connector
COPY storage ./storage
COPY scheduler ./scheduler
COPY backbone ./backbone
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[brokers]'

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CONNECTOR_DATA_DIR=/data \
    CONNECTOR_SERVER__HOST=0.0.0.0 \
    CONNECTOR_SERVER__PORT=8080
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'connector[brokers]' && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin connector \
    && mkdir -p /data && chown connector /data
COPY config /etc/connector
USER connector
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4).status != 200)"]
ENTRYPOINT ["connector"]
CMD ["serve"]
