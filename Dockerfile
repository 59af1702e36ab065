# The otel-service sidecar. Build: docker build -t otel-service .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY otel_service ./otel_service
RUN pip install --no-cache-dir --prefix=/install -c constraints.txt .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/otel-service otelsvc \
    && mkdir -p /var/lib/otel-service/spool && chown -R otelsvc /var/lib/otel-service
COPY --from=build /install /usr/local
USER otelsvc
ENV OTELSVC_SPOOL_DIR=/var/lib/otel-service/spool \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/otel-service"]
EXPOSE 5001
# Binding beyond loopback (as a container must) requires OTELSVC_AUTH_TOKEN; set OTELSVC_HOST=0.0.0.0.
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request,os; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('OTELSVC_PORT', '5001'), timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["otel-service"]
CMD ["serve"]
