// The front camera into a <video>, with failures turned into messages a person can act on.

export class CameraError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind; // "insecure" | "unsupported" | "denied" | "missing" | "busy" | "failed"
  }
}

const CONSTRAINTS = {
  audio: false,
  video: {
    facingMode: "user",
    width: { ideal: 640 },
    height: { ideal: 480 },
    frameRate: { ideal: 30, max: 30 },
  },
};

function explain(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return new CameraError(
        "denied",
        "Camera permission was denied. Allow the camera for this site in the browser's " +
          "settings (the camera or lock icon beside the address), then reload.",
      );
    case "NotFoundError":
    case "OverconstrainedError":
      return new CameraError("missing", "No camera was found on this device.");
    case "NotReadableError":
    case "AbortError":
      return new CameraError(
        "busy",
        "The camera could not be started: another app or tab may be using it. Close it and reload.",
      );
    default:
      return new CameraError("failed", `The camera could not be started (${err && (err.name || err)}).`);
  }
}

/** Start the front camera in `video`; resolves once frames play, or throws a CameraError. */
export async function startCamera(video) {
  if (!window.isSecureContext) {
    throw new CameraError(
      "insecure",
      "Browsers only give the camera to secure pages. Open this page over HTTPS: start the " +
        "server with --https (it makes a self-signed certificate; accept the warning once) and " +
        `open https://${location.host}/ , or use http://localhost on this computer.`,
    );
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new CameraError("unsupported", "This browser cannot use a camera (no getUserMedia).");
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia(CONSTRAINTS);
  } catch (err) {
    throw explain(err);
  }
  video.srcObject = stream;
  video.muted = true; // iOS Safari plays inline only when muted and playsinline
  video.setAttribute("playsinline", "");
  try {
    await video.play();
  } catch (err) {
    throw new CameraError("failed", `The camera preview could not start (${err.name || err}). Tap to retry.`);
  }
  if (!video.videoWidth) {
    await new Promise((resolve) => video.addEventListener("loadedmetadata", resolve, { once: true }));
  }
  return stream;
}
