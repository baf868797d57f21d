# One image for every distlab node. Local runs need no Docker (see README); this is for people
# who prefer containers.
FROM python:3.11-slim
WORKDIR /opt/distlab
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir .
EXPOSE 7001
ENTRYPOINT ["distlab"]
CMD ["node", "--data-dir", "/data", "--host", "0.0.0.0", "--port", "7001"]
