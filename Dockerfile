# The image config/kubernetes/ runs. TeckoChecker is installed exactly as the README installs it (a venv in
# /opt/teckochecker/venv, then pip install of this checkout) and runs as an unprivileged user. The config
# comes from a mount (TECKOCHECKER_CONFIG); secrets from mounted files the config names with {file: ...}.
#
#   docker build -t teckochecker:0.1.0 .
#   docker run --rm teckochecker:0.1.0 --version
FROM python:3.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed UID/GID, so runAsUser/fsGroup in the manifests can name them.
RUN groupadd --system --gid 10001 teckochecker \
 && useradd --system --uid 10001 --gid teckochecker --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin teckochecker \
 && install -d -o teckochecker -g teckochecker -m 0700 /var/lib/teckochecker

COPY . /tmp/teckochecker-src
# The README's install command; the source is dropped after, the installed files stay root-owned.
RUN python3 -m venv /opt/teckochecker/venv \
 && /opt/teckochecker/venv/bin/pip install --no-cache-dir /tmp/teckochecker-src \
 && rm -rf /tmp/teckochecker-src

# STATE_DIRECTORY puts the default SQLite store (one daemon, no state.url) on a volume, as systemd does;
# replicas use a PostgreSQL state.url instead and write nothing locally.
ENV PATH=/opt/teckochecker/venv/bin:$PATH \
    TECKOCHECKER_CONFIG=/etc/teckochecker/teckochecker.yaml \
    STATE_DIRECTORY=/var/lib/teckochecker
VOLUME ["/var/lib/teckochecker"]
WORKDIR /var/lib/teckochecker
USER 10001:10001
EXPOSE 9718

# For plain Docker (Kubernetes uses its own probes): the daemon answers /healthz while its event loop runs.
# The default port; change it here too if the config moves http.port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9718/healthz', timeout=4)"]

ENTRYPOINT ["teckochecker"]
CMD ["run", "--log-format", "json"]
