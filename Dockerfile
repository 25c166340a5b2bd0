# The CPU server: the int8 model on ONNX Runtime, BlazeFace on LiteRT, no torch, no OpenCV
# (so /api/video answers 501 not_installed: video files need the [video] extra).
#   docker build -t streamfer .
#   docker run --rm -p 8080:8080 streamfer          # then http://localhost:8080/
# Flags go after the image name (they replace CMD's) or in STREAMFER_* environment variables
# (README, "The server"). deploy/kubernetes/streamfer.yaml runs this image.

# The page's face detectors (npm @mediapipe/face_detection and @litertjs/core, the Worker
# detector's runtime, pinned in web/package-lock.json): their files are served to phones, and
# the .tflite weights are the server's BlazeFace too.
FROM node:22-bookworm-slim AS page
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

# The wheel: the package, the shipped models and the page with its detector
# (pyproject.toml's data-files), built as `pip install .` builds it.
FROM python:3.11-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamfer/ streamfer/
COPY training/ training/
COPY models/ models/
COPY web/ web/
COPY --from=page /src/web/node_modules/@mediapipe/face_detection/ web/node_modules/@mediapipe/face_detection/
COPY --from=page /src/web/node_modules/@litertjs/ web/node_modules/@litertjs/
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

# The server: the wheel and its dependencies only (no build tools, no npm), run as a user
# without a login or a home.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=wheel /wheels/ /tmp/wheels/
RUN pip install --no-cache-dir /tmp/wheels/streamfer-*.whl \
    && rm -r /tmp/wheels \
    && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin streamfer
USER 10001
WORKDIR /tmp
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["python", "-m", "streamfer.serve"]
CMD ["--host", "0.0.0.0", "--port", "8080"]
