# One image for every relightq service; the command picks the role (api, worker, beat, ...).
FROM python:3.11.13-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Beat keeps its schedule state in /var/lib/relightq; the code in /app stays root-owned.
RUN useradd --system --create-home --uid 10001 --user-group relightq \
    && install -d -o relightq -g relightq /var/lib/relightq

WORKDIR /app

# Dependencies first, in their own layer, so editing the code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Editable on purpose: `relightq migrate` finds migrations/ next to the package sources.
COPY . .
RUN pip install --no-deps -e .

USER relightq
EXPOSE 8000
ENTRYPOINT ["relightq"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
