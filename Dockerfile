# One image for every production process: `worksession api` (default), `worksession worker`,
# `worksession migrate`, `worksession setup-temporal`, `worksession ops ...`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs (every package of pyproject.toml's `include` but `faults`, which
# is test tooling; tests/test_compose.py checks the list): never the local .venv, data/ (it may
# hold a dev JWT secret) or .git.
WORKDIR /src
COPY pyproject.toml README.md worker.py ./
COPY domain/ domain/
COPY workflows/ workflows/
COPY orchestration/ orchestration/
COPY activities/ activities/
COPY application/ application/
COPY persistence/ persistence/
COPY api/ api/
COPY worksession/ worksession/
COPY web/ /opt/worksession/web/
RUN pip install '.[s3]' \
    && cd / && rm -rf /src \
    && useradd --create-home --uid 10001 --user-group worksession

# The web console's static files (served at /app by the API).
ENV WORKSESSION_WEB_DIR=/opt/worksession/web
USER worksession
WORKDIR /home/worksession
EXPOSE 8000
CMD ["worksession", "api"]
