# sqlgate domain server: HTTP API + web console (/console) + PG wire, and the federation
# router / domain endpoints from the same image (see deploy/README.md).
#
#   docker build -t sqlgate:0.1.0 .
#   docker run -p 8765:8765 -p 5433:5433 -v sqlgate-home:/var/lib/sqlgate sqlgate:0.1.0
#
# Configuration is by environment variables only (table in deploy/README.md).

# ---- build: wheels for sqlgate and its dependencies (no compilers in the final image)
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY . /src
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[postgres]"

# ---- runtime
FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 sqlgate \
    && useradd --system --uid 10001 --gid sqlgate --no-create-home \
       --home-dir /var/lib/sqlgate --shell /usr/sbin/nologin sqlgate \
    && mkdir -p /var/lib/sqlgate /etc/sqlgate \
    && chown sqlgate:sqlgate /var/lib/sqlgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl \
    && rm -rf /wheels

ENV SQLGATE_HOME=/var/lib/sqlgate \
    SQLGATE_HOST=0.0.0.0 \
    SQLGATE_HTTP_PORT=8765 \
    SQLGATE_PG_PORT=5433 \
    SQLGATE_LOG_LEVEL=info \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Never root: the domain directory holds the ledger, the users' verifiers and the audit key.
USER 10001:10001
WORKDIR /var/lib/sqlgate
VOLUME ["/var/lib/sqlgate"]
EXPOSE 8765 5433

HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v1/health' % os.environ.get('SQLGATE_HTTP_PORT', '8765'), timeout=4)"]

ENTRYPOINT ["sqlgate"]
CMD ["serve"]
