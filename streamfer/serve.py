"""`python -m streamfer.serve`: the server's command, kept at its name for users, the
Procfile and the deploy units; the server itself lives in streamfer/server/ (serve.py).

It imports the server only when run: worker processes started by multiprocessing import
the main module again, and the decode processes (streamfer/server/decoder.py) must not pay
for torch.
"""

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    from streamfer.server.serve import main as serve

    serve(argv)


if __name__ == "__main__":
    main()
