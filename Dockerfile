# One image for the API and the worker (docker-compose.yml runs it both ways).
FROM python:3.11-slim
WORKDIR /srv/skiplock
COPY pyproject.toml README.md alembic.ini ./
COPY skiplock ./skiplock
COPY sql ./sql
COPY app ./app
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --system skiplock
USER skiplock
ENV SKIPLOCK_HOST=0.0.0.0
EXPOSE 8000
CMD ["skiplock", "api"]
